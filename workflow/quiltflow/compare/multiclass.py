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

The entry point is quiltflow.compare.run.compare_models (it reads the files and writes the outputs);
this module scores the rows and builds the document.

Test-time augmentation (``evaluation.tta: dihedral``): each model's TTA evaluation is a row of its
own, ``{model}+tta`` of kind ``tta``, with the same intervals; ``pairwise`` holds its paired tests
against its own model (a = the TTA row, so the difference is TTA minus plain), in the one Holm
family. TTA rows are not in the ensemble, not compared with other models nor with the majority
baseline, and get no confusion or reliability plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from quiltflow.compare import clusterstats, stats
from quiltflow.compare.document import (
    COMPARISON_SCHEMA_VERSION,
    POOLING,
    FoldSpread,
    row_interval,
    video_count_caveat,
)
from quiltflow.compare.paired_tests import Evidence, TestEntry, decide, family_swaps, paired_test_entries
from quiltflow.compare.report import METRIC_LABELS
from quiltflow.compare.rows import ENSEMBLE, Model, Row, comparisons, model_rows, plain_models
from quiltflow.compare.testset import TestSet, load_models, read_model_predictions, t_test_ratio
from quiltflow.core.errors import UserError
from quiltflow.records.metrics_document import load_metrics_document

__all__ = ["ClassRow", "build_comparison", "load_multiclass_models"]

MAJORITY = "majority_baseline"
STRATIFIED = "stratified_baseline"
CI_METHOD = (
    "cluster (group) percentile bootstrap: resamples test videos (the predictions' group column) with "
    "replacement, the same resamples for every row; macro ROC-AUC by its first-order (influence) form"
)
TEST_METHOD = (
    "paired swap permutation test at the video level (each video's predictions of the two models swapped "
    "at random, i.e. a sign flip of per-video differences); with several folds or seeds also the corrected "
    "resampled t-test of Nadeau & Bengio (2003) on per-fold scores; one Holm family over all tests"
)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class ModelExtra:
    """What a model row carries beyond the scores (``tta``: its TTA settings, TTA rows only)."""

    architecture: str
    loss: float
    train_seconds: float
    eval_seconds: float
    tta: Any = None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> ModelExtra:
        timing = doc["timing"]
        return cls(
            doc["architecture"], doc["metrics"]["loss"], timing["train_seconds"], timing["eval_seconds"], doc.get("tta")
        )

    def to_dict(self) -> dict[str, Any]:
        extra = asdict(self)
        if self.tta is None:
            del extra["tta"]
        return extra


@dataclass(frozen=True)
class EnsembleExtra:
    members: str  # the averaged models, comma-separated

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MajorityExtra:
    predicts: str  # the train majority class

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StratifiedExtra:
    expected_accuracy: float  # sum over classes of train share x test share

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassRow:
    """One row of ``rows`` in the document: scores with intervals (None: undefined, or too few
    videos), ``fold`` (accuracy over the (seed, fold) runs, with several) and the row's extras."""

    name: str
    kind: str
    accuracy: float
    accuracy_ci: list[float] | None
    balanced_accuracy: float
    balanced_accuracy_ci: list[float] | None
    f1_macro: float
    f1_macro_ci: list[float] | None
    f1_weighted: float
    auc_macro: float | None
    auc_macro_ci: list[float] | None
    pr_auc_macro: float | None
    ece: float
    video_accuracy: float
    video_accuracy_ci: list[float] | None
    design_effect: float | None
    weights: Any
    n_test: int
    fold: FoldSpread | None
    extra: Any

    def to_dict(self) -> dict[str, Any]:
        """The document's keys in the published order: scores, fold spread, then the extras."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fold", "extra")}
        if self.fold is not None:
            row.update(self.fold.to_dict("accuracy"))
        return {**row, **self.extra.to_dict()}


def read_multiclass_model(metrics_path: str, predictions_path: str, class_names: list[str]) -> tuple[Model, TestSet]:
    """One model's validated metrics document and predictions; its accuracy must match the document's."""
    doc = load_metrics_document(metrics_path)
    predictions = read_model_predictions(doc, metrics_path, predictions_path, class_names)
    accuracy = float(np.mean(predictions.y_pred == predictions.test_set.y_true))
    if abs(accuracy - doc["metrics"]["accuracy"]) > 1e-9:
        raise UserError(
            f"metrics file {metrics_path}: accuracy {doc['metrics']['accuracy']:.6f} does not "
            f"match {predictions_path} ({accuracy:.6f}); re-run evaluate_model"
        )
    model = Model(doc["model"], "model", doc, predictions.y_pred, predictions.probs)
    return model, predictions.test_set


def load_multiclass_models(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], class_names: list[str]
) -> tuple[list[Model], TestSet]:
    """Every model's metrics + predictions, aligned on image_id; return (models, test set)."""
    return load_models(metrics_paths, predictions_paths, partial(read_multiclass_model, class_names=class_names))


def _ensemble_row(plain: list[Model]) -> Row:
    """The plain models' mean probabilities; its prediction is their argmax."""
    mean_probs = np.mean([m.probs for m in plain], axis=0)
    members = EnsembleExtra(", ".join(m.name for m in plain))
    return Row(
        name=ENSEMBLE,
        kind="ensemble",
        probs=mean_probs,
        decisions=mean_probs.argmax(axis=-1),
        weights=f"mean of {len(plain)} models",
        extra=members,
        comparable=True,
    )


def _baseline_rows(test_set: TestSet, shape: tuple[int, int], class_names: list[str], train_counts, seed: int):
    """The majority baseline (probabilities = the train prior) and the stratified-random baseline
    (one-hot random guesses from the train prior), each [seeds, n] decisions."""
    n_seeds, n = shape
    k = len(class_names)
    prior = stats.train_prior(train_counts, class_names)
    majority = stats.majority_class(train_counts, class_names)
    guesses = stats.stratified_predictions(test_set.y_true, train_counts, class_names, seed=seed)
    expected = stats.stratified_expected_accuracy(test_set.y_true, train_counts, class_names)
    majority_row = Row(
        name=MAJORITY,
        kind="baseline",
        probs=np.broadcast_to(prior, (n_seeds, n, k)),
        decisions=np.full((n_seeds, n), majority),
        weights="none",
        extra=MajorityExtra(class_names[majority]),
        comparable=False,
    )
    stratified_row = Row(
        name=STRATIFIED,
        kind="baseline",
        probs=np.broadcast_to(np.eye(k)[guesses], (n_seeds, n, k)),
        decisions=np.broadcast_to(guesses, (n_seeds, n)),
        weights="none",
        extra=StratifiedExtra(expected),
        comparable=False,
    )
    return [majority_row, stratified_row], class_names[majority]


def _scored_rows(
    models: list[Model], test_set: TestSet, class_names: list[str], train_counts, *, seed: int, ensemble: bool
) -> tuple[list[Row], str]:
    """Everything scored: the models (+ TTA rows), their ensemble (with 2+ plain models), then the
    two baselines; also the name of the majority class."""
    rows = model_rows(models, ModelExtra.of)
    plain = plain_models(models)  # the ensemble averages the plain models only
    if ensemble and len(plain) >= 2:
        rows.append(_ensemble_row(plain))
    baselines, majority_name = _baseline_rows(test_set, models[0].decisions.shape, class_names, train_counts, seed)
    return rows + baselines, majority_name


# --------------------------------------------------------------------------- per-group statistics


class Groups(NamedTuple):
    """The test set reduced to videos: image -> group code, per-group true class counts and the
    video label (the most frequent true label of its frames)."""

    codes: np.ndarray
    n_groups: int
    k: int
    true_counts: np.ndarray
    video_label: np.ndarray


def groups_of(test_set: TestSet, k: int) -> Groups:
    codes, n_groups = clusterstats.group_codes(test_set.groups)
    true_counts = clusterstats.counts_per_group(codes, test_set.y_true, n_groups, k)
    return Groups(codes, n_groups, k, true_counts, true_counts.argmax(axis=1))


def row_counts(row: Row, y_true: np.ndarray, groups: Groups) -> dict[str, np.ndarray]:
    """Per seed and group: correct [S, G, k], predicted [S, G, k] counts, video-level correct [S, G]
    (a video's prediction is the argmax of its frames' mean probability), AUC and its influence."""
    correct, predicted, video_correct, aucs, influences = [], [], [], [], []
    codes, n_groups, k = groups.codes, groups.n_groups, groups.k
    for y_pred, probs in zip(row.decisions, row.probs):
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


def point_estimates(row: Row, counts: dict[str, np.ndarray], y_true: np.ndarray, groups: Groups) -> dict:
    """Seed-averaged point estimates of one row."""
    true_n = groups.true_counts.sum(axis=0)
    correct_n, pred_n = counts["correct"].sum(axis=1), counts["predicted"].sum(axis=1)
    scores = {name: float(v.mean()) for name, v in clusterstats.scores_from_counts(true_n, correct_n, pred_n).items()}
    f1 = np.divide(2 * correct_n, true_n + pred_n, out=np.zeros(correct_n.shape), where=(true_n + pred_n) > 0)
    pr_aucs = [clusterstats.macro_pr_auc(y_true, probs) for probs in row.probs]
    return {
        **scores,
        "f1_weighted": float((f1 @ true_n / true_n.sum()).mean()),
        "auc_macro": counts["auc"],
        "pr_auc_macro": None if any(p is None for p in pr_aucs) else float(np.mean(pr_aucs)),
        "ece": float(np.mean([clusterstats.expected_calibration_error(y_true, p) for p in row.probs])),
        "video_accuracy": float(counts["video_correct"].mean()),
    }


def cluster_bootstrap(all_counts: list[dict], groups: Groups, *, samples: int, seed: int) -> dict[str, np.ndarray]:
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


def _fold_scores(row: Row, test_set: TestSet, k: int) -> dict[str, np.ndarray]:
    """Scores per (seed, fold), flattened to [J] in (seed, fold) order."""
    per_metric: dict[str, list[np.ndarray]] = {name: [] for name in clusterstats.SCORE_NAMES}
    y_true = test_set.y_true
    for y_pred, folds in zip(row.decisions, test_set.folds):
        fold_ids, fold_codes = np.unique(folds, return_inverse=True)
        hit = y_pred == y_true
        true_n = clusterstats.counts_per_group(fold_codes, y_true, len(fold_ids), k)
        correct_n = clusterstats.counts_per_group(fold_codes[hit], y_true[hit], len(fold_ids), k)
        pred_n = clusterstats.counts_per_group(fold_codes, y_pred, len(fold_ids), k)
        for name, values in clusterstats.scores_from_counts(true_n, correct_n, pred_n).items():
            per_metric[name].append(values)
    return {name: np.concatenate(values) for name, values in per_metric.items()}


# --------------------------------------------------------------------------- paired tests


def _seed_mean_difference(true_n: np.ndarray, a_totals: np.ndarray, b_totals: np.ndarray, k: int) -> dict:
    """Seed-averaged score of A minus B from per-seed class totals [..., seeds, 2k] (correct | predicted)."""
    score_a = clusterstats.scores_from_counts(true_n, a_totals[..., :k], a_totals[..., k:])
    score_b = clusterstats.scores_from_counts(true_n, b_totals[..., :k], b_totals[..., k:])
    return {name: (score_a[name] - score_b[name]).mean(axis=-1) for name in clusterstats.SCORE_NAMES}


def swap_p_values(
    pairs: list[tuple[str, str]], counts: dict[str, dict], groups: Groups, *, permutations: int, seed: int
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


# --------------------------------------------------------------------------- the document


class _Scores(NamedTuple):
    """Every row scored: per-group counts and point estimates by row name, resampled scores [B, rows]
    (None: too few videos for intervals), per-(seed, fold) scores by row name (None: one run)."""

    groups: Groups
    counts: dict[str, dict[str, np.ndarray]]
    point: dict[str, dict[str, Any]]
    resampled: dict[str, np.ndarray] | None
    fold_scores: dict[str, dict[str, np.ndarray]] | None


def _score_rows(rows: list[Row], test_set: TestSet, k: int, *, seed: int, bootstrap_samples: int) -> _Scores:
    """Point estimates, paired cluster-bootstrap resamples and per-fold scores of every row."""
    groups = groups_of(test_set, k)
    counts = {r.name: row_counts(r, test_set.y_true, groups) for r in rows}
    point = {r.name: point_estimates(r, counts[r.name], test_set.y_true, groups) for r in rows}
    resampled = None  # too few videos: no interval (see clusterstats.MIN_GROUPS_FOR_INTERVALS)
    if groups.n_groups >= clusterstats.MIN_GROUPS_FOR_INTERVALS:
        resampled = cluster_bootstrap([counts[r.name] for r in rows], groups, samples=bootstrap_samples, seed=seed)
    fold_scores = {r.name: _fold_scores(r, test_set, k) for r in rows} if test_set.several_runs else None
    return _Scores(groups, counts, point, resampled, fold_scores)


def _class_row(row: Row, column: int, scores: _Scores, n_test: int, level: float) -> ClassRow:
    """A row's scores with their intervals; ``column``: the row's column of the resampled scores."""
    point = scores.point[row.name]

    def interval(metric: str) -> list[float] | None:
        return row_interval(scores.resampled, metric, column, point[metric], level)

    design_effect = None
    if scores.resampled is not None:
        design_effect = clusterstats.design_effect(scores.resampled["accuracy"][:, column], point["accuracy"], n_test)
    fold = None
    if scores.fold_scores is not None:
        accuracies = scores.fold_scores[row.name]["accuracy"]
        fold = FoldSpread(float(accuracies.mean()), float(accuracies.std(ddof=1)))
    return ClassRow(
        name=row.name,
        kind=row.kind,
        accuracy=point["accuracy"],
        accuracy_ci=interval("accuracy"),
        balanced_accuracy=point["balanced_accuracy"],
        balanced_accuracy_ci=interval("balanced_accuracy"),
        f1_macro=point["f1_macro"],
        f1_macro_ci=interval("f1_macro"),
        f1_weighted=point["f1_weighted"],
        auc_macro=point["auc_macro"],
        auc_macro_ci=interval("auc_macro"),
        pr_auc_macro=point["pr_auc_macro"],
        ece=point["ece"],
        video_accuracy=point["video_accuracy"],
        video_accuracy_ci=interval("video_accuracy"),
        design_effect=design_effect,
        weights=row.weights,
        n_test=n_test,
        fold=fold,
        extra=row.extra,
    )


def _tests(
    rows: list[Row], scores: _Scores, ratio: float | None, level: float, *, permutations: int, seed: int, alpha: float
) -> tuple[list[TestEntry], list[TestEntry], int]:
    """(pairwise tests, tests against the majority baseline, video swaps per test), decided as one
    Holm family."""
    pairs, vs_majority_pairs = comparisons(rows, MAJORITY)
    index = {r.name: i for i, r in enumerate(rows)}
    evidence = Evidence(scores.point, scores.resampled, index, scores.fold_scores, ratio, level)
    swaps = family_swaps(permutations, pairs + vs_majority_pairs, clusterstats.SCORE_NAMES, evidence, alpha)
    swap_p = swap_p_values(pairs + vs_majority_pairs, scores.counts, scores.groups, permutations=swaps, seed=seed)
    pairwise = paired_test_entries(pairs, clusterstats.SCORE_NAMES, evidence, swap_p)
    vs_majority = paired_test_entries(vs_majority_pairs, clusterstats.SCORE_NAMES, evidence, swap_p)
    decide(pairwise + vs_majority, alpha, METRIC_LABELS)
    return pairwise, vs_majority, swaps


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
    video_caveat = video_count_caveat(document)
    if video_caveat is not None:
        caveats.append(video_caveat)
    elif document["n_test"] < 100:
        caveats.append(
            f"Only {document['n_test']} test images: confidence intervals are wide and tests have little power."
        )
    return caveats


def _mean_design_effect(rows: list[ClassRow]) -> float | None:
    """The mean accuracy design effect of the trained models and the ensemble (not TTA or baselines)."""
    effects = [r.design_effect for r in rows if r.kind in ("model", "ensemble") and r.design_effect is not None]
    return float(np.mean(effects)) if effects else None


def _settings(*, seed: int, bootstrap_samples: int, permutations: int, alpha: float) -> dict[str, Any]:
    """The document's method block: seeds, sizes and the methods in words."""
    return {
        "seed": int(seed),
        "bootstrap_samples": int(bootstrap_samples),
        "permutations": int(permutations),
        "alpha": float(alpha),
        "ci_level": 1.0 - alpha,
        "ci_method": CI_METHOD,
        "test_method": TEST_METHOD,
        "pooling": POOLING,
    }


def _counts(test_set: TestSet, groups: Groups, class_names: list[str], train_counts) -> dict[str, Any]:
    """The document's head: test images, predictions, videos, runs and class counts."""
    test_counts = groups.true_counts.sum(axis=0).astype(int).tolist()
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "n_test": len(test_set.y_true),
        "n_predictions": len(test_set.y_true) * len(test_set.seeds),
        "n_groups": groups.n_groups,
        "folds": test_set.n_folds,
        "seeds": len(test_set.seeds),
        "class_names": class_names,
        "test_class_counts": dict(zip(class_names, test_counts)),
        "train_class_counts": {c: int(train_counts.get(c, 0)) for c in class_names},
    }


def build_comparison(
    models: list[Model],
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
    ``models``: decisions [seeds, n] and probabilities [seeds, n, k] on ``test_set`` (kind ``tta``
    models carry ``tta_of``); ``split_ratio``: the split report's n_test/n_train (None: estimated
    from the folds). CIs have level ``1 - alpha``."""
    level = 1.0 - alpha
    rows, majority_name = _scored_rows(models, test_set, class_names, train_counts, seed=seed, ensemble=ensemble)
    scores = _score_rows(rows, test_set, len(class_names), seed=seed, bootstrap_samples=bootstrap_samples)
    ratio = t_test_ratio(test_set, split_ratio)
    pairwise, vs_majority, swaps = _tests(rows, scores, ratio, level, permutations=permutations, seed=seed, alpha=alpha)
    class_rows = [_class_row(row, i, scores, len(test_set.y_true), level) for i, row in enumerate(rows)]
    document = {
        **_counts(test_set, scores.groups, class_names, train_counts),
        "synthetic": bool(synthetic),
        **_settings(seed=seed, bootstrap_samples=bootstrap_samples, permutations=swaps, alpha=alpha),
        "permutations_requested": int(permutations),
        "ece_bins": clusterstats.ECE_BINS,
        "design_effect": _mean_design_effect(class_rows),
        "test_train_ratio": ratio,
        "rows": [r.to_dict() for r in class_rows],
        "pairwise": [t.to_dict() for t in pairwise],
        "vs_majority": [t.to_dict("better_than_majority") for t in vs_majority],
    }
    document["caveats"] = _caveats(document, majority_name)
    return document
