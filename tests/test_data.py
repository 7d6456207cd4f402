"""The shared tf.data reader: exact contents, determinism, augmentation dtype and shape."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from quiltflow.core.errors import UserError
from quiltflow.core.settings import ShardSettings
from quiltflow.data.shards import write_shard
from quiltflow.models.pipeline import load_index, make_dataset, num_examples
from quiltflow.records.shard_index import write_index
from quiltflow.records.tfrecord_io import read_examples

S = 32
N = 30
SHARDS = 3


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Path:
    """30 small images (10 per class) in 3 shards, plus one missing file; returns the index."""
    tmp = tmp_path_factory.mktemp("data")
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    ids, labels = [], []
    for i in range(N):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((48, 40), Image.BILINEAR).save(root / f"{i:03d}.jpg", quality=95)
        ids.append(f"{i:03d}.jpg")
        labels.append(i % 3)
    ids.append("missing.jpg")
    labels.append(0)
    manifest = tmp / "train.parquet"
    pq.write_table(
        pa.table(
            {
                "image_id": ids,
                "label_index": pa.array(labels, pa.int32()),
                "group": [f"g{i // 5}" for i in range(len(ids))],
            }
        ),
        manifest,
    )
    shards, reports = [], []
    for i in range(SHARDS):
        out = tmp / "tfrecords" / "train" / f"train-{i:05d}-of-{SHARDS:05d}.tfrecord"
        rep = out.with_name(out.name + ".report.json")
        write_shard(manifest, root, i, SHARDS, ShardSettings.from_config({"jpeg_quality": 90}, image_size=S), out, rep)
        shards.append(out)
        reports.append(rep)
    index = tmp / "tfrecords" / "train.index.json"
    write_index("train", S, 3, shards, reports, index)
    return index


def collect(ds) -> list[tuple[np.ndarray, ...]]:
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_index_and_counts(index_path: Path):
    assert num_examples(index_path) == N
    assert load_index(index_path)["skipped_by_reason"] == {"missing": 1}


def test_eval_dataset_yields_every_record_once_matching_shards(index_path: Path):
    batches = collect(make_dataset(index_path, 8, training=False, with_ids=True))
    assert [len(b[0]) for b in batches] == [8, 8, 8, 6]  # last partial batch kept
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    ids = [i.decode() for b in batches for i in b[2]]
    assert images.dtype == np.uint8 and images.shape == (N, S, S, 3)
    assert labels.dtype == np.int32
    assert sorted(ids) == [f"{i:03d}.jpg" for i in range(N)]
    assert all(label == int(i[:3]) % 3 for i, label in zip(ids, labels))

    # Pixels equal what PIL decodes from the same records (within decoder rounding).
    ours = {}
    for shard in sorted((index_path.parent / "train").glob("*.tfrecord")):
        for e in read_examples(shard):
            ours[e["image/id"][0].decode()] = np.asarray(Image.open(io.BytesIO(e["image/encoded"][0])).convert("RGB"))
    for img, i in zip(images, ids):
        diff = np.abs(img.astype(int) - ours[i].astype(int))
        assert diff.mean() < 2 and diff.max() <= 8  # libjpeg builds differ in chroma upsampling

    # Evaluation order is fixed.
    again = collect(make_dataset(index_path, 8, training=False, with_ids=True))
    assert [b[2].tolist() for b in again] == [b[2].tolist() for b in batches]


def test_training_is_seeded_and_reshuffles(index_path: Path):
    def run(seed):
        ds = make_dataset(index_path, 4, training=True, augment=True, seed=seed, with_ids=True)
        return collect(ds), collect(ds)  # two epochs of the same dataset

    (a1, a2), (b1, _), (c1, _) = run(7), run(7), run(8)
    for x, y in zip(a1, b1):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    order = lambda batches: [i for b in batches for i in b[2].tolist()]  # noqa: E731
    assert sorted(order(a1)) == sorted(order(a2)) and len(order(a1)) == N
    assert order(a1) != order(a2)  # each epoch reshuffles
    assert order(a1) != order(c1)  # another seed, another order


def test_augmentation_keeps_uint8_shape_and_changes_pixels(index_path: Path):
    plain = collect(make_dataset(index_path, N, training=False, with_ids=True))[0]
    aug = collect(make_dataset(index_path, N, training=False, augment=True, seed=3, with_ids=True))[0]
    assert aug[0].dtype == np.uint8 and aug[0].shape == (N, S, S, 3)
    assert aug[2].tolist() == plain[2].tolist()  # augmentation does not reorder
    assert np.array_equal(aug[1], plain[1])
    diff = np.abs(aug[0].astype(int) - plain[0].astype(int)).reshape(N, -1).mean(1)
    assert (diff > 1).sum() >= N // 2
    # Colour jitter is small: per-image mean colour moves little even when geometry changes.
    means = np.abs(aug[0].reshape(N, -1, 3).mean(1) - plain[0].reshape(N, -1, 3).mean(1))
    assert means.max() < 30


def test_image_size_override_and_batches_without_ids(index_path: Path):
    batch = next(iter(make_dataset(index_path, 5, training=False, image_size=16)))
    assert len(batch) == 2
    assert batch[0].dtype == tf.uint8 and tuple(batch[0].shape) == (5, 16, 16, 3)


def test_missing_shard_is_a_user_error(index_path: Path, tmp_path: Path):
    bad = tmp_path / "train.index.json"
    bad.write_text(index_path.read_text())  # shard paths are relative: none exist from here
    with pytest.raises(UserError, match="missing"):
        make_dataset(bad, 4, training=False)


def test_dihedral_views_are_the_eight_flips_and_rotations():
    from quiltflow.models.pipeline import dihedral_table, random_dihedral

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 5, 5, 3), dtype=np.uint8)
    out = random_dihedral(tf.constant(images), tf.constant([3, 4], tf.int64), tf.constant(dihedral_table(5))).numpy()
    views_seen = set()
    for src, got in zip(images, out):
        views = [np.rot90(v, k) for v in (src, src[:, ::-1]) for k in range(4)]
        matches = [k for k, v in enumerate(views) if np.array_equal(v, got)]
        assert matches, "output is not a flip/rotation of its input"
        views_seen.add(matches[0])
    assert len(views_seen) > 2  # the view is random per image


def test_colour_jitter_with_zero_ranges_is_identity(monkeypatch):
    import quiltflow.models.pipeline as data

    monkeypatch.setattr(data, "BRIGHTNESS_DELTA", 0.0)
    monkeypatch.setattr(data, "CONTRAST_RANGE", (1.0, 1.0))
    monkeypatch.setattr(data, "SATURATION_RANGE", (1.0, 1.0))
    monkeypatch.setattr(data, "HUE_DELTA", 0.0)
    images = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    out = data._colour_jitter(tf.constant(images), tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(out, images)
    # Saturation 0 gives grey: R == G == B within rounding.
    monkeypatch.setattr(data, "SATURATION_RANGE", (0.0, 0.0))
    grey = data._colour_jitter(tf.constant(images), tf.constant([1, 2], tf.int64)).numpy().astype(int)
    assert np.abs(grey - grey[..., :1]).max() <= 1
