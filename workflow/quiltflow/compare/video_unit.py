"""The comparison at the unit that carries the label, the video (issue 27; rule compare_videos).

Frame models' predictions become one row per (seed, video): the mean of the video's frame
probabilities, its argmax, the video's label (its most frequent frame label, ties to the smaller
index, as bag models label a video); bag models (metrics ``unit: video``) predict videos already.
All of them then go through the multiclass comparison (``compare.multiclass.build_comparison``):
one row per video, so its cluster bootstrap resamples videos and its paired tests pair videos, in
one Holm family. Each model row says the unit it was trained at (``unit``). No TensorFlow.

A multi-label run goes through the multi-label comparison (``compare.multilabel``: mAP, macro AUC,
F1 and the others with video bootstrap intervals, video swap tests of mAP and macro AUC, the
label-frequency baseline at the train frames' prevalence). A frame model's video is then its
frames' mean probabilities, its decided labels those that at least half of its frames decided
(as the ensemble decides), its true labels every label any frame carries (as a bag's label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from quiltflow.compare import report_multilabel
from quiltflow.compare.multiclass import build_comparison
from quiltflow.compare.multilabel import build_multilabel_comparison, multi_hot_column, train_prevalence
from quiltflow.compare.report import write_tables
from quiltflow.compare.rows import Model
from quiltflow.compare.testset import TestSet, by_seed, check_file_lists, check_same_test_set
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, read_task
from quiltflow.records.metrics_document import load_metrics_document
from quiltflow.records.predictions import multi_hot_matrix, probability_matrix, read_predictions
from quiltflow.records.split_report import SplitReport

IMAGE_UNIT, VIDEO_UNIT = "image", "video"


def unit_of(doc: dict[str, Any]) -> str:
    """The unit a metrics document's model predicts (absent: image, documents before issue 27)."""
    return doc.get("unit", IMAGE_UNIT)


def frames_to_videos(frame: pd.DataFrame, k: int, source: str, task: str = MULTICLASS) -> pd.DataFrame:
    """One row per (seed, video) of a frame model's predictions: mean probabilities, their argmax,
    the most frequent true frame label and the frames counted (``n_frames``); multi-label also the
    video's true and decided multi-hot (``_multi_hot_votes``)."""
    frame = frame.copy()
    for column in ("fold", "seed"):
        if column not in frame.columns:
            frame[column] = 0
    probs = probability_matrix(frame, source=source)
    if probs.shape[1] != k:
        raise UserError(f"{source}: probabilities have {probs.shape[1]} entries, not {k}")
    keys = ["seed", "fold", "group"]
    mean = pd.DataFrame(probs, index=pd.MultiIndex.from_frame(frame[keys])).groupby(level=keys, sort=True).mean()
    counts = frame.groupby(keys + ["true_label"]).size().reset_index(name="n")
    truth = counts.sort_values(keys + ["n", "true_label"], ascending=[True] * 3 + [False, True]).drop_duplicates(keys)
    videos = mean.reset_index()[keys].merge(truth[keys + ["true_label"]], on=keys, how="left")
    matrix = mean.to_numpy()
    videos["n_frames"] = frame.groupby(keys).size().reindex(pd.MultiIndex.from_frame(videos[keys])).to_numpy()
    videos["image_id"] = videos["group"].astype(str)
    videos["pred_label"] = matrix.argmax(axis=1)
    videos["probabilities"] = list(matrix)
    if task == MULTILABEL:
        truth, decided = _multi_hot_votes(frame, keys, source)
        videos["true_label"] = truth.argmax(axis=1)  # the first label carried, as bag predictions say
        videos["true_multi_hot"], videos["pred_multi_hot"] = list(truth), list(decided)
    return videos


def _multi_hot_votes(frame: pd.DataFrame, keys: list[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Per (seed, fold, video) in sorted order: every label any frame carries, and the labels at
    least half of the frames decided (int8 [videos, labels] each)."""
    index = pd.MultiIndex.from_frame(frame[keys])
    truth, decided = (
        pd.DataFrame(multi_hot_matrix(frame, column, source=source), index=index).groupby(level=keys, sort=True)
        for column in ("true_multi_hot", "pred_multi_hot")
    )
    return truth.max().to_numpy(np.int8), (decided.mean().to_numpy() >= 0.5).astype(np.int8)


def _read_video_model(
    metrics_path: str, predictions_path: str, class_names: list[str], task: str = MULTICLASS
) -> tuple[Model, TestSet]:
    """One model as a video-level Model and its TestSet (rows: videos in (seed, video) order);
    multi-label: its decisions are the decided multi-hot, the test set carries the true one."""
    doc = load_metrics_document(metrics_path)
    if doc["metrics"]["class_names"] != class_names:
        raise UserError(f"metrics file {metrics_path}: class_names differ from the label map (stale file?)")
    if doc.get("task", MULTICLASS) != task:
        raise UserError(f"metrics file {metrics_path}: task {doc.get('task')!r}, but the label map says {task}")
    frame = read_predictions(predictions_path)
    if unit_of(doc) == IMAGE_UNIT:
        frame = frames_to_videos(frame, len(class_names), f"predictions file {predictions_path}", task)
    frame, seeds = by_seed(frame, predictions_path)
    shape = (len(seeds), len(frame) // len(seeds), len(class_names))
    probs = probability_matrix(frame, source=predictions_path).reshape(shape)
    decisions = frame["pred_label"].to_numpy(np.int64).reshape(shape[:2])
    y_true = frame["true_label"].to_numpy(np.int64).reshape(shape[:2])
    folds = frame["fold"].to_numpy(np.int64).reshape(shape[:2])
    truth = None
    if task == MULTILABEL:
        decisions = multi_hot_column(frame, "pred_multi_hot", predictions_path, shape)
        truth = multi_hot_column(frame, "true_multi_hot", predictions_path, shape)
        if (truth != truth[0]).any():
            raise UserError(f"predictions file {predictions_path}: a video's true labels differ between seeds")
        truth = truth[0]
    if (y_true != y_true[0]).any():
        raise UserError(f"predictions file {predictions_path}: a video's label differs between seeds")
    ids = frame["image_id"].astype(str).to_numpy()[: shape[1]]
    sha = doc["dataset"]["sha256"]
    test_set = TestSet(metrics_path, predictions_path, sha, ids, ids, y_true[0], folds, seeds, truth)
    return Model(doc["model"], "model", doc, decisions, probs), test_set


def load_video_models(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], class_names: list[str], task: str = MULTICLASS
) -> tuple[list[Model], TestSet]:
    """Every model at the video unit, on one test set of videos (same videos, labels, folds, seeds)."""
    check_file_lists(metrics_paths, predictions_paths)
    models, first = [], None
    for metrics_path, predictions_path in zip(metrics_paths, predictions_paths):
        model, test_set = _read_video_model(metrics_path, predictions_path, class_names, task)
        if any(m.name == model.name for m in models):
            raise UserError(f"metrics file {metrics_path}: model {model.name!r} listed twice")
        if first is None:
            first = test_set
        else:
            check_same_test_set(first, test_set)
        models.append(model)
    return models, first


def _with_units(document: dict[str, Any], models: Sequence[Model]) -> dict[str, Any]:
    """Each model row's training unit (``unit``); baselines and the ensemble get none."""
    units = {m.name: unit_of(m.doc) for m in models}
    for row in document["rows"]:
        row["unit"] = units.get(row["name"])
    document["unit"] = VIDEO_UNIT
    document["trained_at"] = units
    return document


def units_markdown(units: dict[str, str]) -> str:
    """The lines that say at which unit each model was trained."""
    lines = ["", "## Unit each model was trained at", "", "| model | trained at |", "|---|---|"]
    lines += [
        f"| {name} | {'video (bag model)' if unit == VIDEO_UNIT else 'image (frames averaged per video)'} |"
        for name, unit in units.items()
    ]
    return "\n".join(lines) + "\n"


def compare_videos(
    metrics_paths: Sequence[str],
    predictions_paths: Sequence[str],
    split_report_path: str,
    label_map_path: str,
    *,
    seed: int,
    bootstrap_samples: int,
    alpha: float,
    permutations: int = 2000,
    narration_labels: bool = True,
    json_path: str | None = None,
    csv_path: str | None = None,
    md_path: str | None = None,
) -> dict[str, Any]:
    """The video-level comparison of frame and bag models; writes whichever outputs are given.
    Multi-label (the label map's task): ``narration_labels``, the lists are Quilt's per-video lists."""
    class_names, task = read_label_map(label_map_path), read_task(label_map_path)
    split = SplitReport.read(split_report_path)
    models, test_set = load_video_models(metrics_paths, predictions_paths, class_names, task)
    settings = {"seed": seed, "bootstrap_samples": bootstrap_samples, "permutations": permutations, "alpha": alpha}
    tables = {}
    if task == MULTILABEL:
        prevalence = train_prevalence(split, class_names)
        document = build_multilabel_comparison(
            models,
            test_set,
            test_set.multi_hot,
            class_names,
            prevalence,
            split_ratio=split.test_train_ratio(),
            narration_labels=narration_labels,
            **settings,
        )
        tables = {"render": report_multilabel.render_markdown, "csv_writer": report_multilabel.write_csv}
    else:
        counts = split.train_class_counts()
        document = build_comparison(
            models, test_set, class_names, counts, split_ratio=split.test_train_ratio(), **settings
        )
    document = _with_units(document, models)
    write_tables(document, json_path, csv_path, md_path, **tables)
    if md_path:
        with open(md_path, "a") as fh:
            fh.write(units_markdown(document["trained_at"]))
    return document
