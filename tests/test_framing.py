"""tfrecords.framing: center_crop (default), pad (letterbox) and grid (cells averaged per image)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from quiltflow.core.errors import UserError
from quiltflow.core.settings import ShardSettings
from quiltflow.data.images import prepare_image, prepare_views
from quiltflow.data.shards import write_shard
from quiltflow.evaluation.evaluate import _average_cells
from quiltflow.records.shard_index import write_index
from workflow_runner import copy_workflow, snakemake

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def frame_16x9(path, width=320, height=180):
    """A 16:9 'screen frame': red left edge, blue right edge, quadrants of known colours inside."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = GREEN
    pixels[: height // 2, width // 2 :] = WHITE
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = RED
    pixels[:, :24] = RED  # the edges a centre crop throws away
    pixels[:, -24:] = BLUE
    Image.fromarray(pixels).save(path, quality=95)
    return path


def decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)


def close_to(pixel, colour, tol=40):
    return np.abs(np.asarray(pixel) - np.asarray(colour)).max() <= tol


def test_center_crop_is_the_default_policy_byte_for_byte(tmp_path):
    path = frame_16x9(tmp_path / "f.jpg")
    assert prepare_views(path, 64, 90) == [prepare_image(path, 64, 90)]
    view = decoded(prepare_image(path, 64, 90))
    assert not close_to(view[32, 1], RED)  # the red edge strip is outside the centred square


def test_pad_keeps_the_whole_frame_letterboxed(tmp_path):
    path = frame_16x9(tmp_path / "f.jpg")
    [jpeg] = prepare_views(path, 64, 90, framing="pad")
    view = decoded(jpeg)
    assert view.shape == (64, 64, 3)
    assert close_to(view[32, 1], RED) and close_to(view[32, 62], BLUE)  # both edges kept
    assert view[:12].max() < 30 and view[-12:].max() < 30  # black bars: 64 * 9/16 = 36 rows of frame


def test_grid_cells_row_by_row(tmp_path):
    path = frame_16x9(tmp_path / "f.jpg")
    views = [decoded(v) for v in prepare_views(path, 32, 90, framing="grid", grid_size=2)]
    assert len(views) == 4 and all(v.shape == (32, 32, 3) for v in views)
    expected = [GREEN, WHITE, BLUE, RED]  # top-left, top-right, bottom-left, bottom-right
    assert all(close_to(v[16, 16], c) for v, c in zip(views, expected))


def test_grid_orientation_is_applied_before_cutting_cells(tmp_path):
    """An EXIF-rotated frame is oriented first, so cells follow the upright image."""
    path = frame_16x9(tmp_path / "f.jpg")
    upright = Image.open(path)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after a 90-degree clockwise turn
    rotated = tmp_path / "rotated.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif.tobytes())
    views = [decoded(v) for v in prepare_views(rotated, 32, 90, framing="grid", grid_size=2)]
    expected = [GREEN, WHITE, BLUE, RED]
    assert all(close_to(v[16, 16], c) for v, c in zip(views, expected))


def test_grid_shard_has_one_record_per_cell_and_reconciles(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ids = [frame_16x9(images / f"v{i}.jpg").name for i in range(3)]
    (images / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    manifest = tmp_path / "m.parquet"
    rows = [{"image_id": i, "label": "a", "group": i, "label_index": 0} for i in [*ids, "broken.jpg"]]
    pd.DataFrame(rows).to_parquet(manifest)
    settings = ShardSettings.from_config({"framing": "grid", "grid_size": 2}, image_size=32)
    shard, report = tmp_path / "s.tfrecord", tmp_path / "s.report.json"
    result = write_shard(manifest, images, 0, 1, settings, shard, report)
    assert (result["rows"], result["kept"], result["records"], len(result["skipped"])) == (4, 3, 12, 1)
    index = write_index("test", 32, 2, [shard], [report], tmp_path / "test.index.json")
    assert index["num_records"] == 12 and index["records_per_image"] == 4
    assert json.loads((tmp_path / "test.index.json").read_text())["class_counts"] == [12, 0]


def test_cells_are_averaged_per_source_image():
    ids = ["a", "a", "b", "b"]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]])
    out_ids, labels, mean = _average_cells(ids, np.array([0, 0, 1, 1]), probs, 2)
    assert out_ids == ["a", "b"] and labels.tolist() == [0, 1]
    np.testing.assert_allclose(mean, [[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(UserError, match="has 1 cell records, expected 2"):
        _average_cells(["a", "a", "b"], np.array([0, 0, 1]), probs[:3], 2)
    with pytest.raises(UserError, match="different labels"):
        _average_cells(ids, np.array([0, 1, 1, 1]), probs, 2)


@pytest.mark.e2e
@pytest.mark.slow
def test_grid_run_reports_images_not_cells(tmp_path):
    """A real grid run up to custom_cnn's test predictions (the shards, a training and an
    evaluation: what the check reads; the other models and the comparison add nothing to it)."""
    workdir = copy_workflow(tmp_path / "run")
    (workdir / "grid.yaml").write_text("tfrecords:\n  framing: grid\n  grid_size: 2\n")
    snakemake(workdir, "results/predictions/custom_cnn.parquet", configfiles=("config/test.yaml", "grid.yaml"))
    index = json.loads((workdir / "results/tfrecords/test.index.json").read_text())
    manifest = pd.read_parquet(workdir / "results/splits/test.parquet")
    assert index["records_per_image"] == 4
    predictions = pd.read_parquet(workdir / "results/predictions/custom_cnn.parquet")
    skipped = sum(index["skipped_by_reason"].values())
    assert len(predictions) == len(manifest) - skipped == index["num_records"] // 4
    assert predictions["image_id"].is_unique and set(predictions["image_id"]) <= set(manifest["image_id"])


def test_pad_equals_center_crop_on_square_tiles(tmp_path):
    """On square tiles (LC25000, most pathology tiles) the two framings are the same bytes."""
    path = tmp_path / "square.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
    assert prepare_views(path, 64, 90, framing="pad") == prepare_views(path, 64, 90, framing="center_crop")
