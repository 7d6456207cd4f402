"""Sharding: image preparation, bad-file skips, shard writing and the split index (no TF)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps
from quiltflow.core.errors import UserError
from quiltflow.core.settings import ShardSettings
from quiltflow.dag.shard_plan import plan_shards, shard_bounds, shard_count
from quiltflow.data import shards
from quiltflow.data.images import BadImage, prepare_image
from quiltflow.data.shards import write_shard
from quiltflow.records.shard_index import index_shard_files, load_index, write_index
from quiltflow.records.tfrecord_io import iter_records, read_examples
from support import he_like, make_bad_files
from workflow_runner import run_without_tensorflow

S = 32  # output size used by most tests: small keeps them fast


def settings(image_size: int = S, jpeg_quality: int = 90) -> ShardSettings:
    return ShardSettings.from_config({"jpeg_quality": jpeg_quality}, image_size=image_size)


def save_jpeg(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, "JPEG", quality=95, **kw)
    return path


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int16)


def reference(arr: np.ndarray, size: int) -> np.ndarray:
    """Short side to ``size`` then centre crop, with no JPEG in between."""
    im = Image.fromarray(arr)
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=box)).astype(np.int16)


def write_manifest(path: Path, ids: list[str], labels: list[int], row_group_size: int = 3) -> Path:
    table = pa.table(
        {
            "image_id": ids,
            "label": [f"class{i}" for i in labels],  # not read by sharding
            "group": [f"video{i % 4}" for i in range(len(ids))],
            "label_index": pa.array(labels, pa.int32()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> dict:
    """Image root with good images of varied size/shape plus every bad kind, and a manifest."""
    root = tmp_path / "images"
    (root / "good").mkdir(parents=True)
    good, arrays = [], {}
    for i, (w, h) in enumerate([(64, 48), (48, 64), (100, 100), (33, 70), (300, 200), (40, 40)] * 2):
        image_id = f"good/img{i:02d}.jpg"
        arrays[image_id] = he_like(w, h, seed=i)
        save_jpeg(root / image_id, arrays[image_id])
        good.append(image_id)
    bad = make_bad_files(root)
    ids = good[:5] + list(bad) + good[5:]
    labels = [i % 3 for i in range(len(ids))]
    manifest = write_manifest(tmp_path / "train.parquet", ids, labels)
    return {
        "root": root,
        "manifest": manifest,
        "ids": ids,
        "labels": labels,
        "bad": bad,
        "arrays": arrays,
        "tmp": tmp_path,
    }


# ------------------------------------------------------------------------------- geometry


def test_shard_count_formula():
    assert shard_count(0, 100) == 1
    assert shard_count(1, 100) == 1
    assert shard_count(100, 100) == 1
    assert shard_count(101, 100) == 2


@pytest.mark.parametrize(
    "tfrecords, image_size, message",
    [
        ({"jpeg_quality": 10}, S, "tfrecords.jpeg_quality: 10 is less than the minimum of 50"),
        ({"jpeg_quality": 101}, S, "tfrecords.jpeg_quality: 101 is greater than the maximum"),
        ({"images_per_shard": 0}, S, "tfrecords.images_per_shard: 0 is less than the minimum"),
        ({"image_size": S}, S, "tfrecords: Additional properties are not allowed"),
        ({}, 8, "image_size: 8 is less than the minimum of 32"),
    ],
)
def test_shard_settings_bounds_come_from_the_schema(tfrecords, image_size, message):
    with pytest.raises(UserError) as err:
        ShardSettings.from_config(tfrecords, image_size=image_size)
    assert str(err.value).startswith(f"config key {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_shard_settings_defaults_come_from_the_schema():
    assert ShardSettings.from_config(None, image_size=64) == ShardSettings(64, 90, 1000, "center_crop", 2)


def test_plan_counts_rows_from_the_footers(tmp_path: Path):
    paths = {}
    for split, rows in (("train", 7), ("val", 2), ("test", 0)):
        ids = ["a.jpg"] * rows
        paths[split] = str(write_manifest(tmp_path / f"{split}.parquet", ids, [0] * rows))
    plan = plan_shards(paths, 3)
    assert plan == {
        "images_per_shard": 3,
        "splits": {
            "test": {"rows": 0, "num_shards": 1},
            "train": {"rows": 7, "num_shards": 3},
            "val": {"rows": 2, "num_shards": 1},
        },
    }


@pytest.mark.parametrize("rows", [0, 1, 2, 7, 10, 99, 100, 101, 1000, 1001, 4567])
@pytest.mark.parametrize("ips", [1, 3, 10, 100, 1000])
def test_shard_bounds_cover_every_row_once(rows: int, ips: int):
    n = shard_count(rows, ips)
    covered = []
    for i in range(n):
        start, stop = shard_bounds(rows, n, i)
        assert stop - start <= ips
        assert stop > start or rows == 0  # no empty shard when rows exist
        covered.extend(range(start, stop))
    assert covered == list(range(rows))


def test_shard_bounds_rejects_bad_index():
    with pytest.raises(ValueError):
        shard_bounds(10, 2, 2)


# ------------------------------------------------------------------------------- one image


def test_prepare_image_resizes_short_side_and_centre_crops(tmp_path: Path):
    arr = he_like(300, 200, seed=1)
    out = prepare_image(save_jpeg(tmp_path / "a.jpg", arr), 64, 95)
    got = decode(out)
    assert got.shape == (64, 64, 3)
    assert np.abs(got - reference(arr, 64)).mean() < 4  # JPEG twice + DCT scaling tolerance
    # A visibly different crop (left edge instead of centre) is far off: the check can fail.
    left = np.asarray(Image.fromarray(arr).resize((64, 64), Image.BILINEAR, box=(0, 0, 200, 200)))
    assert np.abs(got - left.astype(np.int16)).mean() > 3 * np.abs(got - reference(arr, 64)).mean()


def test_prepare_image_upscales_small_images(tmp_path: Path):
    out = prepare_image(save_jpeg(tmp_path / "s.jpg", he_like(20, 30)), 48, 90)
    assert decode(out).shape == (48, 48, 3)


def test_prepare_image_is_deterministic(tmp_path: Path):
    path = save_jpeg(tmp_path / "d.jpg", he_like(200, 150, seed=3))
    assert prepare_image(path, 56, 90) == prepare_image(path, 56, 90)
    assert prepare_image(path, 56, 90) != prepare_image(path, 56, 70)


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_honoured(tmp_path: Path, orientation: int):
    arr = he_like(90, 60, seed=2)
    arr[:20, :30] = (250, 20, 20)  # a red corner makes every orientation distinguishable
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = save_jpeg(tmp_path / "tagged.jpg", arr, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tagged)))
    got = decode(prepare_image(tagged, S, 95))
    want = reference(upright, S)
    ignored = reference(np.asarray(Image.open(tagged)), S)
    assert np.abs(got - want).mean() < 6
    assert np.abs(got - ignored).mean() > 2 * np.abs(got - want).mean()


def _mode_image(mode: str, tmp_path: Path) -> tuple[Path, tuple[int, int, int]]:
    """A file in ``mode`` whose centre should come out as the returned RGB colour."""
    size = (40, 30)
    if mode == "L":
        im, fmt, rgb = Image.new("L", size, 100), "PNG", (100, 100, 100)
    elif mode == "LA":
        im, fmt, rgb = Image.new("LA", size, (0, 0)), "PNG", (255, 255, 255)
    elif mode == "RGBA":  # half-transparent red over white -> pink
        im, fmt, rgb = Image.new("RGBA", size, (255, 0, 0, 128)), "PNG", (255, 127, 127)
    elif mode == "P":
        im = Image.new("P", size, 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        fmt, rgb = "PNG", (10, 200, 30)
    elif mode == "P-transparent":
        im = Image.new("P", size, 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        im.info["transparency"] = 1
        fmt, rgb = "PNG", (255, 255, 255)
    elif mode == "CMYK":
        im, fmt, rgb = Image.new("CMYK", size, (255, 0, 0, 0)), "JPEG", (0, 255, 255)
    elif mode == "I;16":  # 16-bit PNG: mid-range must map to mid-grey, not clip to white
        im = Image.fromarray(np.full((30, 40), 32768, np.uint16))
        fmt, rgb = "PNG", (128, 128, 128)
    elif mode == "I":  # 32-bit: stretched min..max; centre is the max
        a = np.zeros((30, 40), np.int32)
        a[5:25, 10:30] = 70000
        im, fmt, rgb = Image.fromarray(a), "TIFF", (255, 255, 255)
    elif mode == "F":
        a = np.full((30, 40), -1.0, np.float32)
        a[5:25, 10:30] = 0.5
        im, fmt, rgb = Image.fromarray(a), "TIFF", (255, 255, 255)
    elif mode == "1":
        im, fmt, rgb = Image.new("1", size, 1), "PNG", (255, 255, 255)
    else:
        raise AssertionError(mode)
    path = tmp_path / f"mode_{mode.replace(';', '_')}.{fmt.lower()}"
    im.save(path, fmt)
    assert Image.open(path).mode == mode.split("-")[0]
    return path, rgb


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P-transparent", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str):
    path, rgb = _mode_image(mode, tmp_path)
    out = Image.open(io.BytesIO(prepare_image(path, S, 90)))
    assert out.mode == "RGB" and out.size == (S, S) and out.format == "JPEG"
    centre = np.asarray(out)[S // 2 - 2 : S // 2 + 2, S // 2 - 2 : S // 2 + 2].reshape(-1, 3).mean(0)
    assert np.abs(centre - np.array(rgb)).max() < 8, (mode, centre, rgb)


def test_bad_files_raise_their_reason(dataset):
    for image_id, reason in dataset["bad"].items():
        with pytest.raises(BadImage) as info:
            prepare_image(dataset["root"] / image_id, S, 90)
        assert info.value.reason == reason, image_id


def test_max_pixels_is_a_parameter(tmp_path: Path):
    path = save_jpeg(tmp_path / "big.jpg", he_like(100, 100))
    with pytest.raises(BadImage, match="decompression_bomb"):
        prepare_image(path, S, 90, max_pixels=100 * 99)
    assert prepare_image(path, S, 90, max_pixels=100 * 100)


# ------------------------------------------------------------------------------- shards


def _shard(ds: dict, index: int, n: int, name: str = "out", quality: int = 90) -> tuple[dict, Path]:
    out = ds["tmp"] / name / f"train-{index:05d}-of-{n:05d}.tfrecord"
    report_path = out.with_suffix(".report.json")
    shard_settings = settings(S, quality)
    report = write_shard(ds["manifest"], ds["root"], index, n, shard_settings, out, report_path)
    return report, out


def test_write_shard_counts_every_bad_kind_and_round_trips(dataset):
    report, out = _shard(dataset, 0, 1)
    bad, ids = dataset["bad"], dataset["ids"]
    assert report["rows"] == len(ids)
    assert report["kept"] + len(report["skipped"]) == report["rows"]
    assert report["kept"] == len(ids) - len(bad)
    assert {s["image_id"]: s["reason"] for s in report["skipped"]} == bad
    expected_by_reason: dict[str, int] = {}
    for reason in bad.values():
        expected_by_reason[reason] = expected_by_reason.get(reason, 0) + 1
    assert report["skipped_by_reason"] == expected_by_reason
    assert json.loads(out.with_suffix(".report.json").read_text()) == report
    assert report["bytes"] == out.stat().st_size

    examples = list(read_examples(out))
    kept_rows = [(i, label) for i, label in zip(ids, dataset["labels"]) if i not in bad]
    assert [e["image/id"][0].decode() for e in examples] == [i for i, _ in kept_rows]
    assert [e["image/label"][0] for e in examples] == [label for _, label in kept_rows]
    groups = [f"video{k % 4}" for k, i in enumerate(ids) if i not in bad]
    assert [e["image/group"][0].decode() for e in examples] == groups
    for e in examples:
        got = decode(e["image/encoded"][0])
        want = reference(dataset["arrays"][e["image/id"][0].decode()], S)
        assert got.shape == (S, S, 3)
        assert np.abs(got - want).mean() < 6


def test_shards_split_the_manifest_and_reconcile(dataset):
    n = 3
    reports = [_shard(dataset, i, n)[0] for i in range(n)]
    assert sum(r["rows"] for r in reports) == len(dataset["ids"])
    seen = []
    for i in range(n):
        out = dataset["tmp"] / "out" / f"train-{i:05d}-of-{n:05d}.tfrecord"
        seen += [e["image/id"][0].decode() for e in read_examples(out)]
        seen += [s["image_id"] for s in reports[i]["skipped"]]
    assert sorted(seen) == sorted(dataset["ids"])


def test_same_input_gives_byte_identical_shards(dataset):
    a_report, a = _shard(dataset, 1, 2, "a")
    b_report, b = _shard(dataset, 1, 2, "b")
    assert a.read_bytes() == b.read_bytes()
    assert a_report["sha256"] == b_report["sha256"]
    _, c = _shard(dataset, 1, 2, "c", quality=60)
    assert c.read_bytes() != a.read_bytes()


def test_failed_shard_leaves_no_final_or_temp_file(dataset, monkeypatch):
    real, calls = shards.prepare_views, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "prepare_views", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _shard(dataset, 0, 1)
    folder = dataset["tmp"] / "out"
    assert len(calls) == 3
    assert list(folder.iterdir()) == []


def test_all_broken_shard_is_empty_but_valid(tmp_path: Path, caplog):
    root = tmp_path / "images"
    root.mkdir()
    bad = make_bad_files(root)
    manifest = write_manifest(tmp_path / "m.parquet", list(bad), [0] * len(bad))
    out = tmp_path / "s" / "x-00000-of-00001.tfrecord"
    with caplog.at_level(logging.WARNING, logger="quiltflow"):
        report = write_shard(manifest, root, 0, 1, settings(), out, out.with_suffix(".json"))
    assert out.exists() and out.stat().st_size == 0
    assert list(iter_records(out)) == []
    assert report["kept"] == 0 and len(report["skipped"]) == report["rows"] == len(bad)
    assert report["empty"] is True
    assert "every one" in caplog.text


def test_sharding_and_indexing_never_import_tensorflow(dataset):
    """A shard worker stays ~85 MiB because TensorFlow (~630 MB) is never imported on its path."""
    out = dataset["tmp"] / "notf" / "train-00000-of-00001.tfrecord"
    run_without_tensorflow(
        f"""
        from quiltflow.core.smk import setup_logging
        from quiltflow.core.settings import ShardSettings
        from quiltflow.data.shards import write_shard
        from quiltflow.records.shard_index import write_index
        from quiltflow.dag.shard_plan import plan_shards
        out = {str(out)!r}
        settings = ShardSettings.from_config({{"jpeg_quality": 90}}, image_size=32)
        write_shard({str(dataset["manifest"])!r}, {str(dataset["root"])!r}, 0, 1, settings,
                    out, out + ".report.json")
        write_index("train", 32, 3, [out], [out + ".report.json"], out + ".index.json")
        """
    )
    assert out.stat().st_size > 0


def test_manifest_without_needed_column_is_a_user_error(tmp_path: Path):
    pq.write_table(pa.table({"image_id": ["a.jpg"], "group": ["g"]}), tmp_path / "m.parquet")
    with pytest.raises(UserError, match="label_index"):
        write_shard(
            tmp_path / "m.parquet",
            tmp_path,
            0,
            1,
            settings(),
            tmp_path / "o.tfrecord",
            tmp_path / "o.json",
        )


# ------------------------------------------------------------------------------- index


def test_index_sums_reconcile(dataset):
    n = 3
    outs, reps = [], []
    for i in range(n):
        _, out = _shard(dataset, i, n)
        outs.append(out)
        reps.append(out.with_suffix(".report.json"))
    index_path = dataset["tmp"] / "train.index.json"
    index = write_index("train", S, 3, outs, reps, index_path)
    assert load_index(index_path) == index
    kept = len(dataset["ids"]) - len(dataset["bad"])
    assert index["num_records"] == kept == sum(s["records"] for s in index["shards"])
    assert sum(index["skipped_by_reason"].values()) == len(dataset["bad"])
    assert index["rows"] == len(dataset["ids"])
    assert sum(index["class_counts"]) == kept
    assert [s["path"] for s in index["shards"]] == [f"out/{o.name}" for o in outs]
    assert index_shard_files(index_path) == [o.resolve() for o in outs]
    for s, o in zip(index["shards"], outs):
        assert s["bytes"] == o.stat().st_size

    # A shard rewritten after its report (stale) is caught.
    outs[1].write_bytes(outs[1].read_bytes()[:-1])
    with pytest.raises(UserError, match="stale"):
        write_index("train", S, 3, outs, reps, index_path)


def test_index_rejects_labels_outside_label_map(dataset):
    _, out = _shard(dataset, 0, 1)
    with pytest.raises(UserError, match="label"):
        write_index("train", S, 2, [out], [out.with_suffix(".report.json")], dataset["tmp"] / "i.json")


def test_load_index_names_missing_key(tmp_path: Path):
    (tmp_path / "i.json").write_text(json.dumps({"split": "train"}))
    with pytest.raises(UserError, match="image_size"):
        load_index(tmp_path / "i.json")


# ------------------------------------------------------------------------------- real tiles


def test_real_he_tiles_round_trip(tmp_path: Path, lc25000: Path):
    classes = sorted(p.name for p in lc25000.iterdir() if p.is_dir())
    ids, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((lc25000 / c).glob("*.jpeg"))[:3] + sorted((lc25000 / c).glob("*.jpg"))[:3]:
            ids.append(f"{c}/{f.name}")
            labels.append(k)
    assert ids, "no JPEG tiles found"
    manifest = write_manifest(tmp_path / "m.parquet", ids, labels)
    out = tmp_path / "real.tfrecord"
    report = write_shard(manifest, lc25000, 0, 1, settings(112), out, tmp_path / "real.json")
    assert report["kept"] == len(ids) and not report["skipped"]
    for e in read_examples(out):
        src = np.asarray(Image.open(lc25000 / e["image/id"][0].decode()).convert("RGB"))
        assert np.abs(decode(e["image/encoded"][0]) - reference(src, 112)).mean() < 6


# ------------------------------------------------------------------------------- thin scripts


def test_snakemake_scripts_write_shard_report_and_index(dataset):
    from workflow_runner import run_workflow_script

    tmp, n = dataset["tmp"], 2
    shard_files, report_files = [], []
    for i in range(n):
        shard = tmp / "tfrecords" / "train" / f"train-{i:05d}-of-{n:05d}.tfrecord"
        report = shard.with_name(shard.name + ".report.json")
        run_workflow_script(
            "shard_tfrecords.py",
            input={"manifest": str(dataset["manifest"]), "image_root": str(dataset["root"])},
            output={"shard": str(shard), "report": str(report)},
            params={
                "shard_index": i,
                "num_shards": n,
                "image_size": S,
                "jpeg_quality": 90,
                "framing": "center_crop",
                "grid_size": 2,
            },
            log=tmp / f"shard{i}.log",
        )
        shard_files.append(str(shard))
        report_files.append(str(report))
    label_map = tmp / "label_map.json"
    label_map.write_text(json.dumps({"classes": ["a", "b", "c"], "class_to_index": {"a": 0, "b": 1, "c": 2}}))
    index_file = tmp / "tfrecords" / "train.index.json"
    run_workflow_script(
        "index_tfrecords.py",
        input={"shards": shard_files, "reports": report_files, "label_map": str(label_map)},
        output={"index": str(index_file)},
        params={"split": "train", "image_size": S},
        log=tmp / "index.log",
    )
    index = load_index(index_file)
    assert index["num_classes"] == 3 and index["split"] == "train"
    assert index["num_records"] == len(dataset["ids"]) - len(dataset["bad"])
    assert [s["path"] for s in index["shards"]] == [f"train/{Path(p).name}" for p in shard_files]
    assert "kept" in (tmp / "shard0.log").read_text()
