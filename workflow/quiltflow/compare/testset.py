"""The test set every model of a comparison was evaluated on, read once from each predictions file.

Predictions may carry ``fold`` and ``seed`` columns (absent = fold 0, seed 0): each test image once
per seed, a video in one fold per seed. Paired tests pair outcomes video by video, so every model
must have seen the same images, groups, folds and seeds (and, multi-label, the same multi-hot truth).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from quiltflow.compare.rows import Model
from quiltflow.core.errors import UserError
from quiltflow.records.predictions import probability_matrix, read_predictions


@dataclass(frozen=True)
class TestSet:
    """The test images one model was evaluated on (one row per image, image_id order), and the files
    that say so. ``folds`` is [seeds, images]: a video's fold may differ between seeds.
    ``multi_hot``: the true labels [images, labels] of a multi-label run (None: multiclass)."""

    __test__ = False  # not a pytest test class, whatever its name

    metrics_path: str
    predictions_path: str
    manifest_sha256: str
    image_ids: np.ndarray
    groups: np.ndarray
    y_true: np.ndarray
    folds: np.ndarray
    seeds: tuple[int, ...]
    multi_hot: np.ndarray | None = None

    @property
    def n_folds(self) -> int:
        return max(len(np.unique(f)) for f in self.folds)

    @property
    def several_runs(self) -> bool:
        """Several folds or seeds: per-run scores exist, and with them the corrected t-test."""
        return self.n_folds * len(self.seeds) >= 2


@dataclass(frozen=True)
class Predictions:
    """One predictions file read and checked: its test set, the rows sorted by (seed, image_id)
    (for a task's own columns), predicted classes [seeds, images] and probabilities [seeds, images, k]."""

    test_set: TestSet
    frame: pd.DataFrame
    y_pred: np.ndarray
    probs: np.ndarray


def check_file_lists(metrics_paths: Sequence[str], predictions_paths: Sequence[str]) -> None:
    """At least one model, and one predictions file per metrics file."""
    if not metrics_paths:
        raise UserError("compare_models: no models to compare (config models is empty?)")
    if len(metrics_paths) != len(predictions_paths):
        raise UserError(
            f"compare_models: {len(metrics_paths)} metrics files but {len(predictions_paths)} predictions files"
        )


def by_seed(frame: pd.DataFrame, path: str) -> tuple[pd.DataFrame, tuple[int, ...]]:
    """Add fold 0 / seed 0 where the columns are absent; sort by (seed, image_id); check that every
    seed holds the same images once each."""
    frame = frame.copy()
    for column in ("fold", "seed"):
        if column not in frame.columns:
            frame[column] = 0
    frame["image_id"] = frame["image_id"].astype(str)
    frame = frame.sort_values(["seed", "image_id"], kind="stable").reset_index(drop=True)
    duplicated = frame.duplicated(["seed", "image_id"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise UserError(f"predictions file {path}: image_id {row['image_id']} twice in seed {row['seed']}")
    seeds = tuple(int(s) for s in pd.unique(frame["seed"]))
    first = frame.loc[frame["seed"] == seeds[0], "image_id"].to_numpy()
    for seed in seeds[1:]:
        ids = frame.loc[frame["seed"] == seed, "image_id"].to_numpy()
        if len(ids) != len(first) or not np.array_equal(ids, first):
            raise UserError(f"predictions file {path}: seed {seed} has other test images than seed {seeds[0]}")
    return frame, seeds


def _check_folds_by_video(groups: np.ndarray, folds: np.ndarray, path: str) -> None:
    """A video must lie in one fold (per seed): otherwise its frames leak between train and test."""
    for seed_folds in folds:
        pairs = pd.DataFrame({"group": groups, "fold": seed_folds}).drop_duplicates()
        split = pairs["group"].duplicated()
        if split.any():
            raise UserError(
                f"predictions file {path}: group {pairs.loc[split, 'group'].iloc[0]} lies in several folds "
                "(folds must be grouped by video)"
            )


def _checked_predictions(frame: pd.DataFrame, n_seeds: int, k: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes [seeds, n], probabilities [seeds, n, k]) of a frame sorted by seed."""
    n = len(frame) // n_seeds
    y_pred = frame["pred_label"].to_numpy(np.int64).reshape(n_seeds, n)
    if ((y_pred < 0) | (y_pred >= k)).any():
        raise UserError(f"predictions file {path}: pred_label outside the label map")
    probs = probability_matrix(frame, source=f"predictions file {path}")
    if probs.shape[1] != k:
        raise UserError(f"predictions file {path}: probabilities have {probs.shape[1]} entries, not {k}")
    return y_pred, probs.reshape(n_seeds, n, k)


def read_model_predictions(
    doc: dict[str, Any], metrics_path: str, predictions_path: str, class_names: list[str]
) -> Predictions:
    """A model's predictions in image_id order, checked against its metrics document and the label map."""
    if doc["metrics"]["class_names"] != class_names:
        raise UserError(f"metrics file {metrics_path}: class_names differ from the label map (stale file?)")
    frame = read_predictions(predictions_path)
    if len(frame) != doc["metrics"]["n_test"]:
        raise UserError(
            f"predictions file {predictions_path}: {len(frame)} rows but {metrics_path} says "
            f"n_test={doc['metrics']['n_test']} (stale file?)"
        )
    frame, seeds = by_seed(frame, predictions_path)
    y_pred, probs = _checked_predictions(frame, len(seeds), len(class_names), predictions_path)
    n_seeds, n = y_pred.shape
    y_true = frame["true_label"].to_numpy(np.int64).reshape(n_seeds, n)
    groups = frame["group"].astype(str).to_numpy().reshape(n_seeds, n)
    if (y_true != y_true[0]).any() or (groups != groups[0]).any():
        raise UserError(f"predictions file {predictions_path}: true_label or group differs between seeds")
    folds = frame["fold"].to_numpy(np.int64).reshape(n_seeds, n)
    _check_folds_by_video(groups[0], folds, predictions_path)
    ids = frame["image_id"].to_numpy()[:n]
    test_set = TestSet(
        metrics_path, predictions_path, doc["dataset"]["sha256"], ids, groups[0], y_true[0], folds, seeds
    )
    return Predictions(test_set, frame, y_pred, probs)


def _check_same_images(first: TestSet, other: TestSet) -> None:
    if len(other.image_ids) != len(first.image_ids) or not np.array_equal(other.image_ids, first.image_ids):
        diff = sorted(set(other.image_ids).symmetric_difference(first.image_ids))
        where = f"e.g. image_id {diff[0]}" if diff else "a duplicated image_id"
        raise UserError(
            f"predictions file {other.predictions_path}: test images differ from {first.predictions_path} ({where})"
        )
    for what, mine, theirs in (("true_label", other.y_true, first.y_true), ("group", other.groups, first.groups)):
        if not np.array_equal(mine, theirs):
            row = int(np.flatnonzero(mine != theirs)[0])
            raise UserError(
                f"predictions file {other.predictions_path}: {what} of image_id {other.image_ids[row]} differs"
            )


def check_same_test_set(first: TestSet, other: TestSet) -> None:
    """Paired tests pair outcomes video by video: every model must have seen the same test images,
    groups, folds, seeds and truth, from the same test manifest."""
    _check_same_images(first, other)
    if other.seeds != first.seeds or not np.array_equal(other.folds, first.folds):
        raise UserError(
            f"predictions file {other.predictions_path}: folds or seeds differ from {first.predictions_path}"
        )
    if other.manifest_sha256 != first.manifest_sha256:
        raise UserError(
            f"metrics file {other.metrics_path}: test manifest fingerprint differs from "
            f"{first.metrics_path} (models evaluated on different test sets)"
        )
    if first.multi_hot is not None and not np.array_equal(other.multi_hot, first.multi_hot):
        raise UserError(
            f"predictions file {other.predictions_path}: true_multi_hot differs from {first.predictions_path}"
        )


def load_models(
    metrics_paths: Sequence[str],
    predictions_paths: Sequence[str],
    read_model: Callable[[str, str], tuple[Model, TestSet]],
) -> tuple[list[Model], TestSet]:
    """Every model on one test set: ``read_model(metrics_path, predictions_path)`` reads one (a
    task's reader); names must be unique and the test sets equal. Returns (models, the test set)."""
    check_file_lists(metrics_paths, predictions_paths)
    models: list[Model] = []
    first: TestSet | None = None
    for metrics_path, predictions_path in zip(metrics_paths, predictions_paths):
        model, test_set = read_model(metrics_path, predictions_path)
        if any(m.name == model.name for m in models):
            raise UserError(f"metrics file {metrics_path}: model {model.name!r} listed twice")
        if first is None:
            first = test_set
        else:
            check_same_test_set(first, test_set)
        models.append(model)
    return models, first


def ratio_test_to_train(test_set: TestSet, split_ratio: float | None) -> float | None:
    """n_test/n_train of the corrected t-test, n_train being what a run trains on. With k >= 2 folds
    run f tests on fold f and validates on half ``a`` of fold f+1 (cv.run_buckets), so n_train is
    not n - n_test. The split report's image counts give the real sizes (``split_ratio``: the mean
    over its runs, holdout or folds); without them, the predictions' fold sizes estimate them (half
    of the next fold validating); None with one fold and no counts."""
    if split_ratio is not None:
        return split_ratio
    ratios = []
    for folds in test_set.folds:
        sizes = np.bincount(np.unique(folds, return_inverse=True)[1])
        if len(sizes) < 2:
            return None
        ratios += list(sizes / (len(folds) - sizes - np.roll(sizes, -1) / 2))
    return float(np.mean(ratios))


def t_test_ratio(test_set: TestSet, split_ratio: float | None) -> float | None:
    """The corrected t-test's n_test/n_train with several folds or seeds (then it must be known); None
    with one run, where there is no t-test."""
    if not test_set.several_runs:
        return None
    ratio = ratio_test_to_train(test_set, split_ratio)
    if ratio is None:
        raise UserError("split report: counts.train and counts.test are needed for the corrected t-test over seeds")
    return ratio


def as_bool(values: Any, name: str) -> np.ndarray:
    """A 0/1 array (bool, or integers such as multilabel.multi_hot's int8) as bool. Multi-hot scores
    use ``~`` and ``&``, which are bitwise on integers (~1 == -2): the entry points convert once."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if ((array != 0) & (array != 1)).any():
        raise UserError(f"{name}: values other than 0 and 1")
    return array == 1
