"""Rule compare_models: a model comparison a reviewer can trust, with the video as the unit.

Every model (and, by default, their ``ensemble``: mean probabilities) is compared on the same test
images against two baselines fitted on the train label distribution. Frames of one video are
correlated, so intervals come from a cluster bootstrap that resamples videos (the ``group`` column)
with the same resamples for every row, and paired tests swap two models' predictions video by video
(a sign-flip permutation of per-video differences); with several folds or seeds the corrected
resampled t-test (Nadeau & Bengio 2003) on per-fold scores joins them. Every reported test is in
one Holm family. Works from the metrics JSON and predictions Parquet files alone: this module must
never import TensorFlow (tests check it in a fresh interpreter).

Folds and seeds: predictions may carry ``fold`` and ``seed`` columns (absent = fold 0, seed 0).
Out-of-fold predictions are pooled per seed (each test image once per seed, a video in one fold);
each metric is computed per seed on the same resampled videos and averaged over seeds, so a row
estimates what one trained model achieves (averaging probabilities across seeds would score a seed
ensemble instead). ``accuracy_fold_mean``/``accuracy_fold_sd`` come from the per-(fold, seed) scores.

Macro ROC-AUC intervals use the first-order (influence) form of the same cluster bootstrap:
AUC* = AUC + w @ psi with psi each video's clustered DeLong/Obuchowski component, so they cost one
matrix product instead of a sort per resample.

``results/comparison.json`` keys: ``schema_version``, ``n_test`` (distinct test images),
``n_predictions``, ``n_groups``, ``folds``, ``seeds``, ``class_names``, ``test_class_counts``,
``train_class_counts``, ``synthetic``, ``seed``, ``bootstrap_samples``, ``permutations``, ``alpha``,
``ci_level``, ``ci_method``, ``test_method``, ``pooling``, ``design_effect`` (mean accuracy design
effect of the trained models and ensemble), ``ece_bins``, ``test_train_ratio``, ``rows`` (models,
``ensemble``, ``majority_baseline``, ``stratified_baseline``: ``name, kind, accuracy, accuracy_ci,
balanced_accuracy, balanced_accuracy_ci, f1_macro, f1_macro_ci, f1_weighted, auc_macro, auc_macro_ci,
pr_auc_macro, ece, video_accuracy, video_accuracy_ci, design_effect, weights, n_test`` and, with
several folds or seeds, ``accuracy_fold_mean, accuracy_fold_sd``, + extras), ``pairwise`` and
``vs_majority`` (``a, b, metric, test, difference, difference_ci, p_value, p_value_holm,
significant, better, verdict``; ``t, df`` for the t-test; ``better_than_majority`` in
``vs_majority``), ``caveats``.

Test-time augmentation (``evaluation.tta: dihedral``): each model's TTA evaluation is a row of its
own, ``{model}+tta`` of kind ``tta``, with the same intervals; ``pairwise`` holds its paired tests
against its own model (a = the TTA row, so the difference is TTA minus plain), in the one Holm
family. TTA rows are not in the ensemble, not compared with other models nor with the majority
baseline, and get no confusion or reliability plot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from quiltflow.compare import clusterstats, plots, stats
from quiltflow.compare.report import (
    CURVES_CAPTION,
    METRIC_LABELS,
    METRICS_CAPTION,
    markdown_table,
    render_html,
    render_markdown,
    write_csv,
)
from quiltflow.core.cv import run_buckets
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, read_label_map, write_json
from quiltflow.core.tasks import MULTILABEL, read_task
from quiltflow.records.metrics_document import load_metrics_document
from quiltflow.records.predictions import probability_matrix, read_predictions

__all__ = ["build_comparison", "compare_models", "markdown_table", "render_markdown", "write_csv"]

log = logging.getLogger("quiltflow.compare.multiclass")

COMPARISON_SCHEMA_VERSION = 2
MAJORITY = "majority_baseline"
STRATIFIED = "stratified_baseline"
ENSEMBLE = "ensemble"
TTA_KIND = "tta"  # a model's test-time augmentation variant (rule evaluate_tta), row {model}+tta
TTA_SUFFIX = "+tta"
SWAP_TEST = "video_swap_permutation"
T_TEST = "corrected_resampled_t"

CI_METHOD = (
    "cluster (group) percentile bootstrap: resamples test videos (the predictions' group column) with "
    "replacement, the same resamples for every row; macro ROC-AUC by its first-order (influence) form"
)
TEST_METHOD = (
    "paired swap permutation test at the video level (each video's predictions of the two models swapped "
    "at random, i.e. a sign flip of per-video differences); with several folds or seeds also the corrected "
    "resampled t-test of Nadeau & Bengio (2003) on per-fold scores; one Holm family over all tests"
)
POOLING = (
    "out-of-fold predictions pooled per seed; each metric computed per seed on the same resampled videos "
    "and averaged over seeds (a row estimates one trained model, not a seed ensemble)"
)


class TestSet(NamedTuple):
    """The test images one model was evaluated on (one row per image, image_id order), and the files
    that say so. ``folds`` is [seeds, images]: a video's fold may differ between seeds."""

    metrics_path: str
    predictions_path: str
    manifest_sha256: str
    image_ids: np.ndarray
    groups: np.ndarray
    y_true: np.ndarray
    folds: np.ndarray
    seeds: tuple[int, ...]


# --------------------------------------------------------------------------- loading


def _by_seed(frame: pd.DataFrame, path: str) -> tuple[pd.DataFrame, tuple[int, ...]]:
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


def _read_predictions_of(
    doc: dict[str, Any], metrics_path: str, predictions_path: str, class_names: list[str]
) -> tuple[TestSet, np.ndarray, np.ndarray]:
    """A model's predictions as arrays [seeds, images] in image_id order, checked against its metrics
    document and the label map; return (its test set, y_pred, probabilities [seeds, images, k])."""
    if doc["metrics"]["class_names"] != class_names:
        raise UserError(f"metrics file {metrics_path}: class_names differ from the label map (stale file?)")
    frame = read_predictions(predictions_path)
    if len(frame) != doc["metrics"]["n_test"]:
        raise UserError(
            f"predictions file {predictions_path}: {len(frame)} rows but {metrics_path} says "
            f"n_test={doc['metrics']['n_test']} (stale file?)"
        )
    frame, seeds = _by_seed(frame, predictions_path)
    n_seeds, k = len(seeds), len(class_names)
    n = len(frame) // n_seeds
    y_pred = frame["pred_label"].to_numpy(np.int64).reshape(n_seeds, n)
    if ((y_pred < 0) | (y_pred >= k)).any():
        raise UserError(f"predictions file {predictions_path}: pred_label outside the label map")
    probs = probability_matrix(frame, source=f"predictions file {predictions_path}")
    if probs.shape[1] != k:
        raise UserError(f"predictions file {predictions_path}: probabilities have {probs.shape[1]} entries, not {k}")
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
    return test_set, y_pred, probs.reshape(n_seeds, n, k)


def _check_same_test_set(first: TestSet, other: TestSet) -> None:
    """Paired tests pair outcomes video by video: every model must have seen the same test images,
    groups, folds and seeds."""
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
    if other.seeds != first.seeds or not np.array_equal(other.folds, first.folds):
        raise UserError(
            f"predictions file {other.predictions_path}: folds or seeds differ from {first.predictions_path}"
        )
    if other.manifest_sha256 != first.manifest_sha256:
        raise UserError(
            f"metrics file {other.metrics_path}: test manifest fingerprint differs from "
            f"{first.metrics_path} (models evaluated on different test sets)"
        )


def check_file_lists(metrics_paths: Sequence[str], predictions_paths: Sequence[str]) -> None:
    """At least one model, and one predictions file per metrics file (either task)."""
    if not metrics_paths:
        raise UserError("compare_models: no models to compare (config models is empty?)")
    if len(metrics_paths) != len(predictions_paths):
        raise UserError(
            f"compare_models: {len(metrics_paths)} metrics files but {len(predictions_paths)} predictions files"
        )


def _load_models(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], class_names: list[str]
) -> tuple[list[dict[str, Any]], TestSet]:
    """Load each model's metrics + predictions, aligned on image_id; return (models, test set)."""
    check_file_lists(metrics_paths, predictions_paths)
    models: list[dict[str, Any]] = []
    test_sets: list[TestSet] = []
    for metrics_path, predictions_path in zip(metrics_paths, predictions_paths):
        doc = load_metrics_document(metrics_path)
        name = doc["model"]
        if any(m["name"] == name for m in models):
            raise UserError(f"metrics file {metrics_path}: model {name!r} listed twice")
        test_set, y_pred, probs = _read_predictions_of(doc, metrics_path, predictions_path, class_names)
        if test_sets:
            _check_same_test_set(test_sets[0], test_set)
        test_sets.append(test_set)
        accuracy = float(np.mean(y_pred == test_set.y_true))
        if abs(accuracy - doc["metrics"]["accuracy"]) > 1e-9:
            raise UserError(
                f"metrics file {metrics_path}: accuracy {doc['metrics']['accuracy']:.6f} does not "
                f"match {predictions_path} ({accuracy:.6f}); re-run evaluate_model"
            )
        models.append({"name": name, "kind": "model", "doc": doc, "y_pred": y_pred, "probs": probs})
    return models, test_sets[0]


def _mark_tta(models: list[dict[str, Any]], n_plain: int, tta_metrics_paths: Sequence[str]) -> None:
    """The models after the first ``n_plain`` are their TTA variants, in the same order: mark each
    as a ``tta`` row of its model (its metrics JSON must say model ``{model}+tta`` and ``tta``)."""
    plain, variants = models[:n_plain], models[n_plain:]
    if variants and len(variants) != len(plain):
        raise UserError(f"compare_models: {len(variants)} TTA metrics files for {len(plain)} models")
    for model, variant, path in zip(plain, variants, tta_metrics_paths):
        expected = f"{model['name']}{TTA_SUFFIX}"
        if variant["name"] != expected or "tta" not in variant["doc"]:
            raise UserError(
                f"metrics file {path}: model {variant['name']!r} is not the test-time augmentation of "
                f"{model['name']!r} (expected model {expected!r} and a tta key; re-run evaluate_tta)"
            )
        variant.update(kind=TTA_KIND, tta_of=model["name"])


def _read_split_report(split_report_path: str) -> tuple[dict[str, Any], float | None]:
    """Training class counts and n_test/n_train, from the split report.

    Holdout: the train bucket. k folds: summed over every run's training buckets, i.e. the
    average training distribution of the k runs (each run's prior comes from its own training
    buckets only), and the mean n_test/n_train of the runs, n_train counting the training buckets
    only (not the validation half-fold). None without image counts for every run's buckets.
    """
    split_report = read_json(split_report_path, "split report")
    folds = int(split_report.get("folds", 1))
    class_counts = split_report.get("class_counts")
    plans = [run_buckets(fold, folds) for fold in range(folds)]
    counts: dict[str, int] = {}
    for bucket in (bucket for plan in plans for bucket in plan["train"]):
        if not isinstance(class_counts, dict) or not isinstance(class_counts.get(bucket), dict):
            raise UserError(f"split report {split_report_path}: missing key class_counts.{bucket}")
        for name, n in class_counts[bucket].items():
            counts[name] = counts.get(name, 0) + int(n)
    sizes = split_report.get("counts") or {}
    test_train = [[sum(sizes.get(b, 0) for b in plan[part]) for part in ("test", "train")] for plan in plans]
    if not all(test and train for test, train in test_train):
        return counts, None  # e.g. counts.test absent: 0 would pass for a real ratio
    return counts, float(np.mean([test / train for test, train in test_train]))


# --------------------------------------------------------------------------- rows to score


def _model_extras(doc: dict[str, Any]) -> dict[str, Any]:
    """What a model row carries beyond the metrics: architecture, loss and timings (+ ``tta``)."""
    extras = {
        "architecture": doc["architecture"],
        "loss": doc["metrics"]["loss"],
        "train_seconds": doc["timing"]["train_seconds"],
        "eval_seconds": doc["timing"]["eval_seconds"],
    }
    if "tta" in doc:
        extras["tta"] = doc["tta"]
    return extras


def _scored_rows(
    models: list[dict[str, Any]],
    test_set: TestSet,
    class_names: list[str],
    train_counts: dict[str, Any],
    *,
    seed: int,
    ensemble: bool,
) -> tuple[list[dict[str, Any]], str]:
    """Everything scored: the models, their ensemble (mean probabilities; with 2+ models), then the
    majority baseline (probabilities = the train prior) and the stratified-random baseline (one-hot
    random guesses from the train prior). Each has ``y_pred`` [seeds, n] and ``probs`` [seeds, n, k]."""
    n_seeds, n = models[0]["y_pred"].shape
    k = len(class_names)
    rows = [
        {**m, "weights": m["doc"]["weights"], "extra": _model_extras(m["doc"]), "comparable": m["kind"] == "model"}
        for m in models
    ]
    plain = [m for m in models if m["kind"] == "model"]  # the ensemble averages the plain models only
    if ensemble and len(plain) >= 2:
        mean_probs = np.mean([m["probs"] for m in plain], axis=0)
        members = ", ".join(m["name"] for m in plain)
        rows.append(
            {"name": ENSEMBLE, "kind": "ensemble", "y_pred": mean_probs.argmax(axis=-1), "probs": mean_probs,
             "weights": f"mean of {len(plain)} models", "extra": {"members": members}, "comparable": True}
        )  # fmt: skip
    prior = stats.train_prior(train_counts, class_names)
    majority = stats.majority_class(train_counts, class_names)
    guesses = stats.stratified_predictions(test_set.y_true, train_counts, class_names, seed=seed)
    expected = stats.stratified_expected_accuracy(test_set.y_true, train_counts, class_names)
    rows.append(
        {"name": MAJORITY, "kind": "baseline", "y_pred": np.full((n_seeds, n), majority),
         "probs": np.broadcast_to(prior, (n_seeds, n, k)), "weights": "none",
         "extra": {"predicts": class_names[majority]}, "comparable": False}
    )  # fmt: skip
    rows.append(
        {"name": STRATIFIED, "kind": "baseline", "y_pred": np.broadcast_to(guesses, (n_seeds, n)),
         "probs": np.broadcast_to(np.eye(k)[guesses], (n_seeds, n, k)), "weights": "none",
         "extra": {"expected_accuracy": expected}, "comparable": False}
    )  # fmt: skip
    return rows, class_names[majority]


# --------------------------------------------------------------------------- per-group statistics


class _Groups(NamedTuple):
    """The test set reduced to videos: image -> group code, per-group true class counts and the
    video label (the most frequent true label of its frames)."""

    codes: np.ndarray
    n_groups: int
    k: int
    true_counts: np.ndarray
    video_label: np.ndarray


def _groups_of(test_set: TestSet, k: int) -> _Groups:
    codes, n_groups = clusterstats.group_codes(test_set.groups)
    true_counts = clusterstats.counts_per_group(codes, test_set.y_true, n_groups, k)
    return _Groups(codes, n_groups, k, true_counts, true_counts.argmax(axis=1))


def _row_counts(row: dict[str, Any], y_true: np.ndarray, groups: _Groups) -> dict[str, np.ndarray]:
    """Per seed and group: correct [S, G, k], predicted [S, G, k] counts, video-level correct [S, G]
    (a video's prediction is the argmax of its frames' mean probability), AUC and its influence."""
    correct, predicted, video_correct, aucs, influences = [], [], [], [], []
    codes, n_groups, k = groups.codes, groups.n_groups, groups.k
    for y_pred, probs in zip(row["y_pred"], row["probs"]):
        hit = y_pred == y_true
        correct.append(clusterstats.counts_per_group(codes[hit], y_true[hit], n_groups, k))
        predicted.append(clusterstats.counts_per_group(codes, y_pred, n_groups, k))
        video_probs = np.stack([np.bincount(codes, weights=probs[:, c], minlength=n_groups) for c in range(k)], 1)
        video_correct.append(video_probs.argmax(axis=1) == groups.video_label)
        auc, influence = clusterstats.macro_auc_with_influence(y_true, probs, codes, n_groups)
        aucs.append(auc)
        influences.append(influence)
    return {
        "correct": np.array(correct),
        "predicted": np.array(predicted),
        "video_correct": np.array(video_correct, dtype=np.float64),
        "auc": None if any(a is None for a in aucs) else float(np.mean(aucs)),
        "auc_influence": np.mean(influences, axis=0),
    }


def _point_estimates(row: dict[str, Any], counts: dict[str, np.ndarray], y_true: np.ndarray, groups: _Groups) -> dict:
    """Seed-averaged point estimates of one row."""
    true_n = groups.true_counts.sum(axis=0)
    correct_n, pred_n = counts["correct"].sum(axis=1), counts["predicted"].sum(axis=1)
    scores = {name: float(v.mean()) for name, v in clusterstats.scores_from_counts(true_n, correct_n, pred_n).items()}
    f1 = np.divide(2 * correct_n, true_n + pred_n, out=np.zeros(correct_n.shape), where=(true_n + pred_n) > 0)
    pr_aucs = [clusterstats.macro_pr_auc(y_true, probs) for probs in row["probs"]]
    return {
        **scores,
        "f1_weighted": float((f1 @ true_n / true_n.sum()).mean()),
        "auc_macro": counts["auc"],
        "pr_auc_macro": None if any(p is None for p in pr_aucs) else float(np.mean(pr_aucs)),
        "ece": float(np.mean([clusterstats.expected_calibration_error(y_true, p) for p in row["probs"]])),
        "video_accuracy": float(counts["video_correct"].mean()),
    }


def _cluster_bootstrap(all_counts: list[dict], groups: _Groups, *, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled scores [B, rows] (seed-averaged) of every row from one set of video resamples:
    accuracy, balanced accuracy, macro F1, video accuracy and (first-order) macro AUC."""
    k, n_seeds = groups.k, all_counts[0]["correct"].shape[0]
    blocks = [groups.true_counts]
    for counts in all_counts:
        for s in range(n_seeds):
            blocks += [counts["correct"][s], counts["predicted"][s], counts["video_correct"][s][:, None]]
    blocks += [counts["auc_influence"][:, None] for counts in all_counts]
    sums = clusterstats.resampled_sums(
        np.hstack(blocks), clusterstats.group_weight_chunks(groups.n_groups, samples, seed)
    )
    n_rows = len(all_counts)
    per_row = sums[:, k : k + n_rows * n_seeds * (2 * k + 1)].reshape(-1, n_rows, n_seeds, 2 * k + 1)
    true_n = sums[:, None, None, :k]
    scores = clusterstats.scores_from_counts(true_n, per_row[..., :k], per_row[..., k : 2 * k])
    resampled = {name: values.mean(axis=2) for name, values in scores.items()}
    resampled["video_accuracy"] = per_row[..., 2 * k].mean(axis=2) / groups.n_groups
    shift = sums[:, -n_rows:]
    auc = np.array([np.nan if c["auc"] is None else c["auc"] for c in all_counts])
    resampled["auc_macro"] = np.clip(auc[None, :] + shift, 0.0, 1.0)
    return resampled


def _fold_scores(row: dict[str, Any], test_set: TestSet, k: int) -> dict[str, np.ndarray]:
    """Scores per (seed, fold), flattened to [J] in (seed, fold) order."""
    per_metric: dict[str, list[np.ndarray]] = {name: [] for name in clusterstats.SCORE_NAMES}
    y_true = test_set.y_true
    for y_pred, folds in zip(row["y_pred"], test_set.folds):
        fold_ids, fold_codes = np.unique(folds, return_inverse=True)
        hit = y_pred == y_true
        true_n = clusterstats.counts_per_group(fold_codes, y_true, len(fold_ids), k)
        correct_n = clusterstats.counts_per_group(fold_codes[hit], y_true[hit], len(fold_ids), k)
        pred_n = clusterstats.counts_per_group(fold_codes, y_pred, len(fold_ids), k)
        for name, values in clusterstats.scores_from_counts(true_n, correct_n, pred_n).items():
            per_metric[name].append(values)
    return {name: np.concatenate(values) for name, values in per_metric.items()}


def _test_train_ratio(test_set: TestSet, split_ratio: float | None) -> float | None:
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


# --------------------------------------------------------------------------- paired tests


def _comparisons(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(model vs model pairs incl. the ensemble, then each TTA row vs its own model; each model and
    the ensemble vs the majority baseline). TTA rows meet only their own model: the effect of TTA."""
    names = [r["name"] for r in rows if r["comparable"]]
    tta_pairs = [(r["name"], r["tta_of"]) for r in rows if r["kind"] == TTA_KIND]
    return list(combinations(names, 2)) + tta_pairs, [(name, MAJORITY) for name in names]


def _seed_mean_difference(true_n: np.ndarray, a_totals: np.ndarray, b_totals: np.ndarray, k: int) -> dict:
    """Seed-averaged score of A minus B from per-seed class totals [..., seeds, 2k] (correct | predicted)."""
    score_a = clusterstats.scores_from_counts(true_n, a_totals[..., :k], a_totals[..., k:])
    score_b = clusterstats.scores_from_counts(true_n, b_totals[..., :k], b_totals[..., k:])
    return {name: (score_a[name] - score_b[name]).mean(axis=-1) for name in clusterstats.SCORE_NAMES}


def _swap_p_values(
    pairs: list[tuple[str, str]], counts: dict[str, dict], groups: _Groups, *, permutations: int, seed: int
) -> dict[tuple[str, str], dict[str, float]]:
    """Video-level swap permutation test of every pair and score: under H0 the two models are
    exchangeable within each video, so swapping their predictions in a random half of the videos
    leaves the distribution of the score difference unchanged. The same swaps serve every pair."""
    k, true_n = groups.k, groups.true_counts.sum(axis=0)
    prepared = []
    for a, b in pairs:
        per_a = np.concatenate([counts[a]["correct"], counts[a]["predicted"]], axis=2)  # [S, G, 2k]
        per_b = np.concatenate([counts[b]["correct"], counts[b]["predicted"]], axis=2)
        diff = (per_a - per_b).transpose(1, 0, 2).reshape(groups.n_groups, -1).astype(np.float32)
        prepared.append((diff, per_a.sum(axis=1).astype(np.float64), per_b.sum(axis=1).astype(np.float64)))
    permuted: list[dict[str, list[np.ndarray]]] = [{m: [] for m in clusterstats.SCORE_NAMES} for _ in pairs]
    for swaps in clusterstats.swap_chunks(groups.n_groups, permutations, seed):
        for (diff, a_totals, b_totals), store in zip(prepared, permuted):
            delta = (swaps @ diff).astype(np.float64).reshape(len(swaps), *a_totals.shape)
            for name, values in _seed_mean_difference(true_n, a_totals - delta, b_totals + delta, k).items():
                store[name].append(values)
    p_values = {}
    for pair, (_, a_totals, b_totals), store in zip(pairs, prepared, permuted):
        observed = _seed_mean_difference(true_n, a_totals, b_totals, k)
        p_values[pair] = {
            name: float(clusterstats.swap_permutation_p(observed[name], np.concatenate(store[name])))
            for name in clusterstats.SCORE_NAMES
        }
    return p_values


def _t_test_entry(a: str, b: str, metric: str, fold_scores: dict, ratio: float, level: float) -> dict[str, Any]:
    """Corrected resampled t-test of per-(fold, seed) score differences, with its interval."""
    from scipy.stats import t as student_t

    differences = fold_scores[a][metric] - fold_scores[b][metric]
    t_value, p_value, df = clusterstats.corrected_resampled_t(differences, ratio)
    half = student_t.ppf(0.5 + level / 2, df) * np.sqrt((1 / len(differences) + ratio) * differences.var(ddof=1))
    mean = float(differences.mean())
    return {"a": a, "b": b, "metric": metric, "test": T_TEST, "difference": mean,
            "difference_ci": [mean - float(half), mean + float(half)], "p_value": p_value,
            "t": t_value if np.isfinite(t_value) else None, "df": df}  # fmt: skip


def _test_entries(
    pairs: list[tuple[str, str]],
    point: dict[str, dict],
    resampled: dict[str, np.ndarray] | None,
    index: dict[str, int],
    swap_p: dict[tuple[str, str], dict[str, float]],
    fold_scores: dict[str, dict] | None,
    ratio: float | None,
    level: float,
    metrics: Sequence[str] = clusterstats.SCORE_NAMES,
) -> list[dict[str, Any]]:
    """One entry per pair, score and test (swap test always; t-test with several folds or seeds).
    ``resampled`` None: too few videos for the swap tests' bootstrap intervals (``difference_ci`` None)."""
    entries = []
    for a, b in pairs:
        for metric in metrics:
            difference = point[a][metric] - point[b][metric]
            interval = None
            if resampled is not None:
                paired = resampled[metric][:, index[a]] - resampled[metric][:, index[b]]
                interval = list(clusterstats.percentile_ci(paired, difference, level))
            entries.append(
                {"a": a, "b": b, "metric": metric, "test": SWAP_TEST, "difference": difference,
                 "difference_ci": interval, "p_value": swap_p[(a, b)][metric]}
            )  # fmt: skip
            if fold_scores is not None:
                entries.append(_t_test_entry(a, b, metric, fold_scores, ratio, level))
    return entries


def _decide(entries: list[dict[str, Any]], alpha: float, labels: dict[str, str] = METRIC_LABELS) -> None:
    """Holm-adjust every reported test as one family, then give each its plain-words verdict."""
    for entry, p_adjusted in zip(entries, stats.holm_adjust([e["p_value"] for e in entries])):
        winner, sentence = stats.difference_verdict(
            entry["a"], entry["b"], labels[entry["metric"]], entry["difference"],
            p_value=entry["p_value"], p_adjusted=p_adjusted, alpha=alpha,
            test="video swap test" if entry["test"] == SWAP_TEST else "corrected resampled t-test",
        )  # fmt: skip
        entry.update({"p_value_holm": p_adjusted, "significant": winner is not None, "better": winner})
        entry["verdict"] = sentence


# --------------------------------------------------------------------------- the document


def _row_document(
    row: dict[str, Any], point: dict, resampled: dict[str, np.ndarray] | None, i: int, n_test: int, level: float
) -> dict[str, Any]:
    """A row's scores with their intervals (None where the score is, or without ``resampled``)."""

    def ci(metric: str) -> list[float] | None:
        if point[metric] is None or resampled is None:
            return None
        return list(clusterstats.percentile_ci(resampled[metric][:, i], point[metric], level))

    document = {"name": row["name"], "kind": row["kind"]}
    for metric in ("accuracy", "balanced_accuracy", "f1_macro"):
        document.update({metric: point[metric], f"{metric}_ci": ci(metric)})
    document.update(
        {"f1_weighted": point["f1_weighted"], "auc_macro": point["auc_macro"], "auc_macro_ci": ci("auc_macro"),
         "pr_auc_macro": point["pr_auc_macro"], "ece": point["ece"], "video_accuracy": point["video_accuracy"],
         "video_accuracy_ci": ci("video_accuracy"),
         "design_effect": None if resampled is None
         else clusterstats.design_effect(resampled["accuracy"][:, i], point["accuracy"], n_test),
         "weights": row["weights"], "n_test": n_test}
    )  # fmt: skip
    return document


def too_few_videos(n_groups: int, n_test: int) -> str:
    """The caveat of a test set with too few videos for any interval (see _score_everything)."""
    return (
        f"Only {n_groups} test video{'' if n_groups == 1 else 's'} ({n_test} images): the video is the unit, and "
        f"intervals and design effects need at least {clusterstats.MIN_GROUPS_FOR_INTERVALS} test videos, so none "
        "are given (n/a); the video swap tests cannot reach significance."
    )


def _caveats(document: dict[str, Any], majority_name: str) -> list[str]:
    caveats = []
    if document["synthetic"]:
        caveats.append(
            "These results come from the synthetic demo data set: they test the pipeline, not any "
            "model's ability to classify histopathology."
        )
    for row in document["rows"]:
        tests = [t for t in document["vs_majority"] if t["a"] == row["name"]]
        if tests and not any(t["better_than_majority"] for t in tests):
            caveats.append(
                f"{row['name']} is not significantly better than always predicting the majority class "
                f"({majority_name}) on accuracy, balanced accuracy or macro F1 (video-level tests, Holm-adjusted)."
            )
    if document["n_groups"] < clusterstats.MIN_GROUPS_FOR_INTERVALS:
        caveats.append(too_few_videos(document["n_groups"], document["n_test"]))
    elif document["n_groups"] < 30:
        caveats.append(
            f"Only {document['n_groups']} test videos ({document['n_test']} images): the video is the unit, "
            "so intervals are wide and tests have little power."
        )
    elif document["n_test"] < 100:
        caveats.append(
            f"Only {document['n_test']} test images: confidence intervals are wide and tests have little power."
        )
    return caveats


def _score_everything(rows, test_set, k, *, seed, bootstrap_samples, level):
    """Point estimates, paired cluster-bootstrap resamples and per-fold scores of every row."""
    groups = _groups_of(test_set, k)
    counts = {r["name"]: _row_counts(r, test_set.y_true, groups) for r in rows}
    point = {r["name"]: _point_estimates(r, counts[r["name"]], test_set.y_true, groups) for r in rows}
    resampled = None  # too few videos: no interval (see clusterstats.MIN_GROUPS_FOR_INTERVALS)
    if groups.n_groups >= clusterstats.MIN_GROUPS_FOR_INTERVALS:
        resampled = _cluster_bootstrap([counts[r["name"]] for r in rows], groups, samples=bootstrap_samples, seed=seed)
    n_folds = max(len(np.unique(f)) for f in test_set.folds)
    several = n_folds * len(test_set.seeds) >= 2
    fold_scores = {r["name"]: _fold_scores(r, test_set, k) for r in rows} if several else None
    documents = []
    for i, row in enumerate(rows):
        document = _row_document(row, point[row["name"]], resampled, i, len(test_set.y_true), level)
        if fold_scores is not None:
            accuracies = fold_scores[row["name"]]["accuracy"]
            document.update(
                {"accuracy_fold_mean": float(accuracies.mean()), "accuracy_fold_sd": float(accuracies.std(ddof=1))}
            )
        documents.append({**document, **row["extra"]})
    return documents, groups, counts, point, resampled, fold_scores, n_folds


def build_comparison(
    models: list[dict[str, Any]],
    test_set: TestSet,
    class_names: list[str],
    train_counts: dict[str, Any],
    *,
    seed: int,
    bootstrap_samples: int,
    permutations: int,
    alpha: float,
    ensemble: bool = True,
    synthetic: bool = False,
    split_ratio: float | None = None,
) -> dict[str, Any]:
    """The comparison document of loaded models (see the module docstring); reads and writes nothing.
    ``models`` are ``{"name", "kind", "doc", "y_pred" [seeds, n], "probs" [seeds, n, k]}`` dicts on
    ``test_set`` (kind ``tta`` rows also carry ``tta_of``, their model's name); CIs have level
    ``1 - alpha``."""
    level = 1.0 - alpha
    rows, majority_name = _scored_rows(models, test_set, class_names, train_counts, seed=seed, ensemble=ensemble)
    scored = _score_everything(
        rows, test_set, len(class_names), seed=seed, bootstrap_samples=bootstrap_samples, level=level
    )
    row_documents, groups, counts, point, resampled, fold_scores, n_folds = scored
    pairs, vs_majority_pairs = _comparisons(rows)
    ratio = _test_train_ratio(test_set, split_ratio) if fold_scores is not None else None
    if fold_scores is not None and ratio is None:
        raise UserError("split report: counts.train and counts.test are needed for the corrected t-test over seeds")
    swap_p = _swap_p_values(pairs + vs_majority_pairs, counts, groups, permutations=permutations, seed=seed)
    index = {r["name"]: i for i, r in enumerate(rows)}
    args = (point, resampled, index, swap_p, fold_scores, ratio, level)
    pairwise, vs_majority = _test_entries(pairs, *args), _test_entries(vs_majority_pairs, *args)
    _decide(pairwise + vs_majority, alpha)
    for entry in vs_majority:
        entry["better_than_majority"] = entry["better"] == entry["a"]
    effects = [
        r["design_effect"]
        for r in row_documents
        if r["kind"] in ("model", "ensemble") and r["design_effect"] is not None
    ]
    test_counts = groups.true_counts.sum(axis=0).astype(int).tolist()
    document = {
        "schema_version": COMPARISON_SCHEMA_VERSION, "n_test": len(test_set.y_true),
        "n_predictions": len(test_set.y_true) * len(test_set.seeds), "n_groups": groups.n_groups,
        "folds": n_folds, "seeds": len(test_set.seeds), "class_names": class_names,
        "test_class_counts": dict(zip(class_names, test_counts)),
        "train_class_counts": {c: int(train_counts.get(c, 0)) for c in class_names},
        "synthetic": bool(synthetic), "seed": int(seed), "bootstrap_samples": int(bootstrap_samples),
        "permutations": int(permutations), "alpha": float(alpha), "ci_level": level, "ci_method": CI_METHOD,
        "test_method": TEST_METHOD, "pooling": POOLING, "ece_bins": clusterstats.ECE_BINS,
        "design_effect": float(np.mean(effects)) if effects else None, "test_train_ratio": ratio,
        "rows": row_documents, "pairwise": pairwise, "vs_majority": vs_majority,
    }  # fmt: skip
    document["caveats"] = _caveats(document, majority_name)
    return document


def _write_plots(
    document: dict[str, Any],
    models: list[dict[str, Any]],
    test_set: TestSet,
    history_paths: Sequence[str],
    plot_paths: dict[str, Any],
) -> None:
    """Metric bars with CIs; per model a row-normalised confusion matrix and a reliability diagram;
    training curves. ``plot_paths``: ``metrics_plot``, ``curves_plot``, ``confusion_plots``,
    ``reliability_plots`` (lists matched to models by position); None skips a plot."""
    if plot_paths.get("metrics_plot"):
        # Rows without intervals (too few videos) get NaN bounds: bars without error bars.
        no_ci = {f"{m}_ci": [np.nan, np.nan] for m in ("accuracy", "f1_macro")}
        rows = [r if r["accuracy_ci"] is not None else {**r, **no_ci} for r in document["rows"]]
        plots.plot_metric_bars(rows, plot_paths["metrics_plot"], level=document["ci_level"])
    ece = {r["name"]: r["ece"] for r in document["rows"]}
    for key, what in (("confusion_plots", "confusion plot"), ("reliability_plots", "reliability plot")):
        paths = plot_paths.get(key)
        if paths is None:
            continue
        if len(paths) != len(models):
            raise UserError(f"compare_models: {len(paths)} {what} paths for {len(models)} models")
        for model, path in zip(models, paths):
            if key == "confusion_plots":
                title = f"{model['name']}: confusion matrix (row-normalised)"
                plots.plot_confusion(model["doc"]["metrics"]["confusion_matrix"], document["class_names"], title, path)
            else:
                probs = model["probs"].reshape(-1, model["probs"].shape[-1])  # every seed's predictions
                table = clusterstats.reliability_bins(np.tile(test_set.y_true, model["probs"].shape[0]), probs)
                plots.plot_reliability(table, f"{model['name']}: reliability (ECE {ece[model['name']]:.3f})", path)
    if plot_paths.get("curves_plot"):
        if len(history_paths) != len(models):
            raise UserError(f"compare_models: {len(history_paths)} history files for {len(models)} models")
        histories = {m["name"]: plots.read_history(p) for m, p in zip(models, history_paths)}
        plots.plot_training_curves(histories, plot_paths["curves_plot"])


def write_tables(
    document: dict[str, Any], json_path, csv_path, md_path, *, render=render_markdown, csv_writer=write_csv
) -> None:
    """The comparison as JSON, CSV and Markdown (whichever paths are given); a multi-label
    comparison passes its own ``render`` and ``csv_writer``."""
    if json_path:
        write_json(document, json_path)
    if csv_path:
        csv_writer(document["rows"], csv_path)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(render(document), encoding="utf-8")


def compare_models(
    metrics_paths: Sequence[str],
    predictions_paths: Sequence[str],
    history_paths: Sequence[str],
    split_report_path: str,
    label_map_path: str,
    *,
    seed: int,
    bootstrap_samples: int,
    alpha: float,
    permutations: int = 2000,
    ensemble: bool = True,
    synthetic: bool = False,
    narration_labels: bool = True,
    tta_metrics_paths: Sequence[str] = (),
    tta_predictions_paths: Sequence[str] = (),
    json_path: str | None = None,
    csv_path: str | None = None,
    md_path: str | None = None,
    html_path: str | None = None,
    metrics_plot: str | None = None,
    curves_plot: str | None = None,
    confusion_plots: Sequence[str] | None = None,
    reliability_plots: Sequence[str] | None = None,
    ap_plot: str | None = None,
) -> dict[str, Any]:
    """Compare every model with each other and with baselines; write whichever outputs are given.
    Files are matched by position: ``metrics_paths[i]``, ``predictions_paths[i]``,
    ``history_paths[i]``, ``confusion_plots[i]`` and ``reliability_plots[i]`` belong to the same
    model. CIs have level ``1 - alpha``. ``tta_metrics_paths``/``tta_predictions_paths``: each
    model's test-time augmentation variant (same order), rows ``{model}+tta`` of kind ``tta``, each
    tested against its own model; no plots of their own. Returns the comparison document (also
    written to ``json_path``). Multi-label: quiltflow.compare.multilabel (+ ``ap_plot``, and
    ``narration_labels``: Quilt's per-video lists, a caveat)."""
    arguments = dict(locals())  # the parameters, before any other local exists
    if read_task(label_map_path) == MULTILABEL:
        from quiltflow.compare.multilabel import compare_multilabel

        return compare_multilabel(**arguments)
    if not 0 < alpha < 1:
        raise UserError(f"params alpha: must be in (0, 1), got {alpha}")
    class_names = read_label_map(label_map_path)
    train_counts, split_ratio = _read_split_report(split_report_path)
    models, test_set = _load_models(
        [*metrics_paths, *tta_metrics_paths], [*predictions_paths, *tta_predictions_paths], class_names
    )
    _mark_tta(models, len(metrics_paths), tta_metrics_paths)
    document = build_comparison(
        models, test_set, class_names, train_counts, seed=seed, bootstrap_samples=bootstrap_samples,
        permutations=permutations, alpha=alpha, ensemble=ensemble, synthetic=synthetic, split_ratio=split_ratio,
    )  # fmt: skip
    write_tables(document, json_path, csv_path, md_path)  # tables first, then plots
    plot_paths = {"metrics_plot": metrics_plot, "curves_plot": curves_plot, "confusion_plots": confusion_plots,
                  "reliability_plots": reliability_plots}  # fmt: skip
    _write_plots(document, [m for m in models if m["kind"] == "model"], test_set, history_paths, plot_paths)
    if html_path:  # last: it embeds the two summary plots
        figures = [(p, c) for p, c in ((metrics_plot, METRICS_CAPTION), (curves_plot, CURVES_CAPTION)) if p]
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_path).write_text(render_html(document, figures), encoding="utf-8")
    return document
