"""SimCLR core: NT-Xent against a numpy reference, the view dataset, and pretrain_simclr end to end
(files, backbone round trip into models.backbone, resume after a kill)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

import keras
from quiltflow.core.errors import UserError
from quiltflow.core.settings import ShardSettings
from quiltflow.data.shards import write_shard
from quiltflow.models import simclr
from quiltflow.models.builders import ResNet50Preprocess, backbone
from quiltflow.models.simclr import PretrainRun, keep_batch, nt_xent_loss, pretrain_dataset, steps_per_epoch
from quiltflow.records.shard_index import write_index

S = 32
N = 18  # batch 8: two full batches and one of 2


@pytest.fixture(scope="module")
def pool_index(tmp_path_factory) -> Path:
    """N small H&E-ish JPEGs in 2 shards at S px; returns the index JSON."""
    tmp = tmp_path_factory.mktemp("pool")
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N):
        low = rng.integers(60, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((40, 40), Image.BICUBIC).save(root / f"{i:03d}.jpg", quality=95)
    manifest = tmp / "train.parquet"
    table = {
        "image_id": [f"{i:03d}.jpg" for i in range(N)],
        "label_index": pa.array([i % 2 for i in range(N)], pa.int32()),
        "group": [f"g{i}" for i in range(N)],
    }
    pq.write_table(pa.table(table), manifest)
    shards, reports = [], []
    for i in range(2):
        out = tmp / "tfrecords" / f"train-{i:05d}-of-00002.tfrecord"
        report = out.with_name(out.name + ".report.json")
        write_shard(manifest, root, i, 2, ShardSettings.from_config({"jpeg_quality": 90}, image_size=S), out, report)
        shards.append(out)
        reports.append(report)
    index = tmp / "tfrecords" / "train.index.json"
    write_index("train", S, 2, shards, reports, index)
    return index


# --- NT-Xent -----------------------------------------------------------------------------------


def nt_xent_reference(z: np.ndarray, temperature: float) -> np.ndarray:
    """Per-row NT-Xent as in the SimCLR paper, written out with loops."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    losses = np.zeros(n)
    for i in range(n):
        sims = np.array([z[i] @ z[k] / temperature for k in range(n)])
        others = np.exp([sims[k] for k in range(n) if k != i])
        partner = i + 1 if i % 2 == 0 else i - 1
        losses[i] = -np.log(np.exp(sims[partner]) / others.sum())
    return losses


@pytest.mark.parametrize("temperature", [0.05, 0.2, 0.5, 1.0])
def test_nt_xent_matches_numpy_reference(temperature):
    z = np.random.default_rng(int(temperature * 100)).normal(size=(12, 16)).astype(np.float32)
    got = nt_xent_loss(temperature)(tf.zeros([12]), tf.constant(z)).numpy()
    assert got.dtype == np.float32 and got.shape == (12,)
    np.testing.assert_allclose(got, nt_xent_reference(z.astype(np.float64), temperature), rtol=2e-4, atol=2e-4)


def test_nt_xent_is_float32_under_float16_projections_and_lower_for_aligned_pairs():
    rng = np.random.default_rng(1)
    loss = nt_xent_loss(0.2)
    random = rng.normal(size=(16, 32)).astype(np.float32)
    aligned = np.repeat(rng.normal(size=(8, 32)), 2, axis=0).astype(np.float32)
    half = loss(tf.zeros([16]), tf.constant(aligned, tf.float16))
    assert half.dtype == tf.float32
    assert float(tf.reduce_mean(loss(tf.zeros([16]), aligned))) < float(tf.reduce_mean(loss(tf.zeros([16]), random)))
    with pytest.raises(UserError, match="temperature"):
        nt_xent_loss(0.0)


def test_nt_xent_trains_inside_model_fit():
    """A tiny dense model fitted with the loss and dummy zero targets lowers it."""
    keras.utils.set_random_seed(0)
    x = np.repeat(np.random.default_rng(2).normal(size=(32, 8)), 2, axis=0).astype(np.float32)
    x += np.random.default_rng(3).normal(scale=0.3, size=x.shape).astype(np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)])
    model.compile(keras.optimizers.Adam(1e-2), loss=nt_xent_loss(0.5))
    history = model.fit(x, np.zeros(len(x), np.float32), batch_size=16, shuffle=False, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


# --- data ----------------------------------------------------------------------------------------


def test_batches_kept_and_steps():
    assert steps_per_epoch(18, 8) == 3 and steps_per_epoch(17, 8) == 2 and steps_per_epoch(1, 8) == 0
    assert steps_per_epoch(18, 8, replicas=4) == 2  # a last batch of 2 cannot split over 4 replicas
    assert bool(keep_batch(tf.constant(2))) and not bool(keep_batch(tf.constant(1)))


def test_pretrain_dataset_yields_view_pairs_deterministically(pool_index):
    ds = pretrain_dataset(pool_index, 8, 24, seed=3)
    batches = [(v.numpy(), y.numpy()) for v, y in ds]
    assert [v.shape for v, _ in batches] == [(16, 24, 24, 3), (16, 24, 24, 3), (4, 24, 24, 3)]
    assert all(v.dtype == np.uint8 and (y == 0).all() and y.shape == (len(v),) for v, y in batches)
    again = [v.numpy() for v, _ in pretrain_dataset(pool_index, 8, 24, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(again, [v for v, _ in batches]))
    second_epoch = [v.numpy() for v, _ in ds]
    assert not np.array_equal(second_epoch[0], batches[0][0])  # reshuffled, new views
    one = [v.shape[0] for v, _ in pretrain_dataset(pool_index, 17, 24, seed=3)]
    assert one == [34]  # the last batch of one image is dropped


# --- pretrain_simclr -------------------------------------------------------------------------------


class Killed(Exception):
    """Stands in for a SIGKILL after fit: the backup is there, the weights are not."""


def pretrain(pool_index, out, epochs):
    return simclr.pretrain_simclr(
        pool_index,
        out,
        image_size=S,
        epochs=epochs,
        batch_size=8,
        learning_rate=1e-3,
        temperature=0.2,
        projection_dim=16,
        seed=0,
        threads=2,
    )


@pytest.mark.slow
def test_pretrain_resumes_and_writes_a_backbone_that_models_backbone_loads(pool_index, tmp_path, monkeypatch):
    """Killed after its epoch (backup written, weights not), the job's rerun resumes: no epoch
    left to run, the backed-up weights saved. One fit only: tracing a ResNet50 step takes ~20 s."""
    out = tmp_path / "pretrained"
    bases = []

    def spy(*args):
        model, base = real_model(*args)
        bases.append(base)
        return model, base

    real_model = simclr.simclr_model
    monkeypatch.setattr(simclr, "simclr_model", spy)
    with monkeypatch.context() as patch:
        patch.setattr(PretrainRun, "finish", lambda self: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            pretrain(pool_index, out, epochs=1)
    assert (out / "backup" / "training_metadata.json").is_file()
    assert len(list(csv.DictReader(open(out / "history.partial.csv")))) == 1

    info = pretrain(pool_index, out, epochs=1)
    assert info["resumed_from_epoch"] == 1 and info["epochs_run"] == 1
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["epoch"] for r in rows] == ["0"] and {"loss", "learning_rate"} <= set(rows[0])
    assert not (out / "backup").exists() and not (out / "history.partial.csv").exists()
    assert info["method"] == "simclr" and info["pool_images"] == N and info["views_seen"] == 2 * N
    assert info["final_loss"] == pytest.approx(float(rows[0]["loss"])) and np.isfinite(info["final_loss"])
    assert len(info["weights_sha256"]) == 64 and info["device"].startswith(("CPU", "GPU"))

    x = np.random.default_rng(4).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    trained = bases[0](ResNet50Preprocess()(x), training=False).numpy()  # the killed run's base
    loaded = backbone(S, weights=str(out / "backbone.weights.h5"))(x).numpy()
    np.testing.assert_allclose(loaded, trained, atol=1e-5, rtol=1e-5)
    fresh = bases[1].get_layer("conv1_bn").moving_variance.numpy()
    assert not np.allclose(fresh, 1.0)  # the rerun's base holds restored (trained) statistics


def test_pretrain_run_start_drops_unfinished_rows_and_fresh_start_clears(tmp_path):
    run = PretrainRun(tmp_path)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2}')
    run.history.write_text("epoch,loss\n0,5.0\n1,4.0\n2,3.9\n")  # killed after the row of epoch 3
    assert run.start() == 2
    assert run.history.read_text().splitlines() == ["epoch,loss", "0,5.0", "1,4.0"]
    run.history.write_text("epoch,loss\n0,5.0\n")
    with pytest.raises(UserError, match="delete"):
        run.start()
    (tmp_path / "backup" / "training_metadata.json").unlink()
    run.final_history.write_text("epoch,loss\n")
    assert run.start() == 0
    assert not run.history.exists() and not run.final_history.exists() and not run.backup.exists()
