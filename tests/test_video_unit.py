"""The comparison at the video (issue 27): frame models' mean frame probability per video and bag
models' video predictions side by side, one video bootstrap and one Holm family."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from quiltflow.compare.video_unit import compare_videos, frames_to_videos
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import write_json
from quiltflow.core.tasks import MULTICLASS, MULTILABEL
from quiltflow.evaluation.metrics import compute_metrics
from quiltflow.records.metrics_document import build_metrics_document
from quiltflow.records.predictions import write_predictions

CLASSES = ["A", "B", "C"]
VIDEOS, FRAMES = 30, 6


def _write_model(tmp_path, name: str, table: pd.DataFrame, unit: str, task: str = MULTICLASS) -> tuple[str, str]:
    pred_path, metrics_path = tmp_path / f"{name}.parquet", tmp_path / f"{name}.json"
    write_predictions(table, pred_path)
    doc = build_metrics_document(
        model=name,
        architecture="abmil" if unit == "video" else "custom_cnn",
        weights="none",
        dataset_sha256="0" * 64,
        train_seconds=1.0,
        eval_seconds=1.0,
        metrics=compute_metrics(table, CLASSES, top_k=2, task=task),
        task=task,
        unit=unit,
    )
    write_json(doc, metrics_path)
    return str(metrics_path), str(pred_path)


def _probs(pred: np.ndarray) -> list[np.ndarray]:
    probs = np.full((len(pred), 3), 0.2, np.float32)
    probs[np.arange(len(pred)), pred] = 0.6
    return list(probs)


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(0)
    video_label = np.arange(VIDEOS) % 3
    groups = np.repeat([f"v{i:02d}" for i in range(VIDEOS)], FRAMES)
    frame_true = np.repeat(video_label, FRAMES)
    # The frame model: right on half of each video's frames, random elsewhere.
    frame_pred = np.where(np.arange(len(groups)) % 2 == 0, frame_true, rng.integers(0, 3, len(groups)))
    frames = pd.DataFrame(
        {
            "image_id": [f"{g}-{i}" for i, g in enumerate(groups)],
            "group": groups,
            "true_label": frame_true.astype(np.int32),
            "pred_label": frame_pred.astype(np.int32),
            "probabilities": _probs(frame_pred),
        }
    )
    bag_pred = np.where(np.arange(VIDEOS) < 27, video_label, (video_label + 1) % 3)
    bags = pd.DataFrame(
        {
            "image_id": [f"v{i:02d}" for i in range(VIDEOS)],
            "group": [f"v{i:02d}" for i in range(VIDEOS)],
            "true_label": video_label.astype(np.int32),
            "pred_label": bag_pred.astype(np.int32),
            "probabilities": _probs(bag_pred),
            "n_frames": np.full(VIDEOS, FRAMES, np.int32),
        }
    )
    (tmp_path / "label_map.json").write_text(json.dumps({"classes": CLASSES}))
    counts = {"train": {c: 10 for c in CLASSES}}
    (tmp_path / "split_report.json").write_text(
        json.dumps({"seed": 1, "counts": {"train": 300, "test": 180}, "class_counts": counts})
    )
    frame_paths = _write_model(tmp_path, "cnn", frames, "image")
    bag_paths = _write_model(tmp_path, "abmil", bags, "video")
    return tmp_path, frames, bags, frame_paths, bag_paths


def test_frames_become_one_row_per_video_with_the_mean_probability(run):
    _, frames, _, _, _ = run
    videos = frames_to_videos(frames, 3, "cnn")
    assert len(videos) == VIDEOS and (videos["n_frames"] == FRAMES).all()
    first = frames[frames["group"] == "v00"]
    mean = np.mean(np.stack(first["probabilities"]), axis=0)
    np.testing.assert_allclose(videos.loc[videos["group"] == "v00", "probabilities"].iloc[0], mean)
    assert videos.loc[videos["group"] == "v00", "pred_label"].iloc[0] == mean.argmax()


def test_frame_and_bag_models_side_by_side_at_the_video(run):
    tmp_path, frames, _, frame_paths, bag_paths = run
    out = tmp_path / "comparison_video"
    document = compare_videos(
        [frame_paths[0], bag_paths[0]],
        [frame_paths[1], bag_paths[1]],
        str(tmp_path / "split_report.json"),
        str(tmp_path / "label_map.json"),
        seed=1,
        bootstrap_samples=200,
        permutations=200,
        alpha=0.05,
        json_path=str(out) + ".json",
        md_path=str(out) + ".md",
    )
    rows = {row["name"]: row for row in document["rows"]}
    assert rows["abmil"]["unit"] == "video" and rows["cnn"]["unit"] == "image"
    assert rows["abmil"]["accuracy"] == pytest.approx(27 / 30)
    videos = frames_to_videos(frames, 3, "cnn")
    assert rows["cnn"]["accuracy"] == pytest.approx(float((videos["pred_label"] == videos["true_label"]).mean()))
    assert document["n_test"] == VIDEOS  # the units are videos: the bootstrap resamples them
    pairs = {frozenset((t["a"], t["b"])) for t in document["pairwise"]}
    assert frozenset(("abmil", "cnn")) in pairs  # one Holm family holds the pair
    assert "| abmil | video (bag model) |" in (tmp_path / "comparison_video.md").read_text()


def test_a_bag_model_on_other_videos_is_refused(run):
    tmp_path, _, bags, frame_paths, _ = run
    other = _write_model(tmp_path, "meanmil", bags.iloc[:-1], "video")
    with pytest.raises(UserError, match="test images differ"):
        compare_videos(
            [frame_paths[0], other[0]],
            [frame_paths[1], other[1]],
            str(tmp_path / "split_report.json"),
            str(tmp_path / "label_map.json"),
            seed=1,
            bootstrap_samples=200,
            alpha=0.05,
        )


def test_explain_takes_frame_models_and_predict_every_model():
    from quiltflow.dag.config import bag_models, explain_bag_models, explain_models, target_models, validate_config

    config = {
        "dataset": {"format": "quilt"},
        "models": {"cnn": {"architecture": "custom_cnn"}, "mil": {"architecture": "abmil", "weights": "none"}},
    }
    assert bag_models(validate_config(config)) == ["mil"]
    assert explain_models(validate_config(config)) == ["cnn"]
    assert explain_bag_models(validate_config(config)) == ["mil"]  # its attention gallery
    named = validate_config({**config, "explain": {"models": ["mil"]}})
    assert explain_models(named) == [] and explain_bag_models(named) == ["mil"]
    # predict: a bag model predicts videos (rule predict_videos), a frame model images.
    assert target_models(validate_config(config), "predict") == ["cnn", "mil"]
    assert target_models(validate_config({**config, "predict": {"models": ["mil"]}}), "predict") == ["mil"]


def test_attention_gallery_shows_each_videos_most_and_least_attended_frames(tmp_path):
    from quiltflow.evaluation.attention_gallery import draw_attention_gallery, extreme_frames, select_videos

    weights = np.array([0.05, 0.5, 0.1, 0.2, 0.05, 0.1, 0.0])
    attention = pd.DataFrame(
        {"image_id": [f"f{i}" for i in range(7)], "group": "v", "fold": 0, "seed": 0, "attention": weights}
    )
    top, least = extreme_frames(attention, "v")
    assert list(top["image_id"]) == ["f1", "f3", "f2"]  # ties broken by id: f2 before f5
    assert list(least["image_id"]) == ["f6", "f4", "f0"] and not set(top["image_id"]) & set(least["image_id"])
    short_top, short_least = extreme_frames(attention.iloc[:4], "v")
    assert len(short_top) == 3 and list(short_least["image_id"]) == ["f0"]  # a short video: no repeats
    predictions = pd.DataFrame({"group": ["v", "w", "x"], "true_label": [0, 0, 1], "pred_label": [0, 1, 1]})
    chosen = select_videos(predictions, 1, seed=3)
    assert sorted(chosen["true_label"]) == [0, 1]
    assert select_videos(predictions, 1, seed=3).equals(chosen)  # seeded
    images = {i: np.full((8, 8, 3), 40 * k, np.uint8) for k, i in enumerate(attention["image_id"])}
    path = tmp_path / "attention.png"
    draw_attention_gallery(predictions.iloc[:1], attention, images, CLASSES, "abmil", path)
    assert path.stat().st_size > 1000


def test_multilabel_frame_and_bag_models_side_by_side_at_the_video(tmp_path):
    """Frames become videos (mean probability, labels at least half the frames decided, every
    label any frame carries); the multi-label comparison scores and tests them by video."""
    rng = np.random.default_rng(1)
    truth = (rng.random((VIDEOS, 3)) < 0.4).astype(np.int8)
    truth[truth.sum(axis=1) == 0, 0] = 1
    groups = np.repeat([f"v{i:02d}" for i in range(VIDEOS)], FRAMES)
    frame_truth = np.repeat(truth, FRAMES, axis=0)
    frame_probs = np.clip(0.6 * frame_truth + 0.4 * rng.random(frame_truth.shape), 0, 1).astype(np.float32)
    frames = pd.DataFrame(
        {
            "image_id": [f"{g}-{i}" for i, g in enumerate(groups)],
            "group": groups,
            "true_label": frame_truth.argmax(axis=1).astype(np.int32),
            "pred_label": frame_probs.argmax(axis=1).astype(np.int32),
            "true_multi_hot": list(frame_truth),
            "pred_multi_hot": list((frame_probs >= 0.5).astype(np.int8)),
            "probabilities": list(frame_probs),
        }
    )
    videos = frames_to_videos(frames, 3, "frames", MULTILABEL)
    first = videos.iloc[0]
    assert first["group"] == "v00" and first["n_frames"] == FRAMES
    assert np.array_equal(first["true_multi_hot"], truth[0])
    votes = np.stack(frames["pred_multi_hot"])[:FRAMES].mean(axis=0) >= 0.5
    assert np.array_equal(first["pred_multi_hot"], votes.astype(np.int8))
    assert np.allclose(first["probabilities"], frame_probs[:FRAMES].mean(axis=0))
    bag_probs = np.clip(0.8 * truth + 0.1, 0, 1).astype(np.float32)
    bags = pd.DataFrame(
        {
            "image_id": [f"v{i:02d}" for i in range(VIDEOS)],
            "group": [f"v{i:02d}" for i in range(VIDEOS)],
            "true_label": truth.argmax(axis=1).astype(np.int32),
            "pred_label": bag_probs.argmax(axis=1).astype(np.int32),
            "true_multi_hot": list(truth),
            "pred_multi_hot": list((bag_probs >= 0.5).astype(np.int8)),
            "probabilities": list(bag_probs),
            "n_frames": np.full(VIDEOS, FRAMES, np.int32),
        }
    )
    (tmp_path / "label_map.json").write_text(json.dumps({"classes": CLASSES, "task": MULTILABEL}))
    counts = {"train": {c: 40 for c in CLASSES}}
    report = {"seed": 1, "counts": {"train": 100, "test": VIDEOS * FRAMES}, "class_counts": counts}
    (tmp_path / "split_report.json").write_text(json.dumps(report))
    frame_paths = _write_model(tmp_path, "cnn", frames, "image", task=MULTILABEL)
    bag_paths = _write_model(tmp_path, "abmil", bags, "video", task=MULTILABEL)
    md = tmp_path / "comparison_video.md"
    document = compare_videos(
        [frame_paths[0], bag_paths[0]],
        [frame_paths[1], bag_paths[1]],
        str(tmp_path / "split_report.json"),
        str(tmp_path / "label_map.json"),
        seed=1,
        bootstrap_samples=200,
        permutations=200,
        alpha=0.05,
        md_path=str(md),
    )
    assert document["task"] == MULTILABEL and document["n_test"] == VIDEOS and document["n_groups"] == VIDEOS
    rows = {row["name"]: row for row in document["rows"]}
    assert rows["abmil"]["map_macro"] == pytest.approx(1.0) and rows["abmil"]["unit"] == "video"
    assert rows["cnn"]["unit"] == "image" and rows["label_frequency_baseline"]["auc_macro"] == pytest.approx(0.5)
    low, high = rows["cnn"]["map_macro_ci"]
    assert low <= rows["cnn"]["map_macro"] <= high
    pairs = {frozenset((t["a"], t["b"])): t for t in document["pairwise"]}
    assert {t["metric"] for t in document["pairwise"]} >= {"map_macro", "auc_macro"}
    assert frozenset(("cnn", "abmil")) in pairs or frozenset(("abmil", "cnn")) in pairs
    assert "trained at" in md.read_text()
