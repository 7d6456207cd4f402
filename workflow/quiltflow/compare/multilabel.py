"""Rule compare_models for a multi-label run (issue 16): the video is the unit, as in quiltflow.compare.multiclass.

Targets are multi-hot: the pathology list of each Quilt video over the class vocabulary. Every
model (``{model}+tta`` rows too), their ``ensemble`` (mean sigmoid probabilities; a label is decided
when at least half of the members' ``pred_multi_hot`` decide it) and the ``label_frequency_baseline``
(every image scored with the train prevalence of each label; it decides the labels with prevalence
>= 0.5, usually none, so its F1 is usually 0 while its ROC-AUC is exactly 0.5 and its AP the test
prevalence) are scored on the same test images.

Scores per row: ``map_macro`` and ``auc_macro`` (mean over labels with a positive, and for AUC a
negative, test image of the per-label average precision / ROC-AUC, as scikit-learn computes them),
``f1_macro`` (over labels present in the truth or the decisions), ``f1_micro``, ``top1_in_labels``
(the top-scored label is one of the image's labels), ``subset_accuracy`` (every label right),
``hamming_loss``, and ``ece`` of every (image, label) probability as a binary event.

Intervals: cluster (video) percentile bootstrap, the same resamples for every row. A resample is a
vector of video multiplicities; every score is recomputed exactly on the resampled images as a
weighted score: counts by one matrix product, AP and AUC from cumulative weighted positives and
negatives along each label's fixed score order (one sort per label, a cumulative sum per resample
block). Paired tests: the video swap permutation test (quiltflow.compare.paired_tests) on ``map_macro`` and
``auc_macro``: swapping two models' predictions in a set of videos is a 0/1 weighting of the pooled
predictions of both models, so the same weighted AP/AUC serve. With several folds or seeds the
corrected resampled t-test on per-(seed, fold) differences joins them; all tests are one Holm
family. Seeds: as in quiltflow.compare.multiclass, scores are computed per seed and averaged.

Metrics JSON files are read as written by evaluate_model (its schema validation is that rule's
job); the multi-hot columns ``true_multi_hot``/``pred_multi_hot`` come from the predictions.
The entry point is quiltflow.compare.run.compare_models; this module scores the rows and builds the
document (its tables: compare.report_multilabel; its plots: compare.figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from quiltflow.compare import clusterstats
from quiltflow.compare.document import (
    COMPARISON_SCHEMA_VERSION,
    POOLING,
    FoldSpread,
    row_interval,
    video_count_caveat,
)
from quiltflow.compare.paired_tests import Evidence, TestEntry, decide, family_swaps, paired_test_entries
from quiltflow.compare.rows import ENSEMBLE, Model, Row, comparisons, model_rows, plain_models
from quiltflow.compare.testset import TestSet, as_bool, load_models, read_model_predictions, t_test_ratio
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json
from quiltflow.core.tasks import MULTILABEL
from quiltflow.records.split_report import SplitReport

__all__ = ["LabelRow", "build_multilabel_comparison", "load_multilabel_models", "train_prevalence"]

BASELINE = "label_frequency_baseline"
RANKED = ("map_macro", "auc_macro")  # the tested scores
COUNTED = ("f1_macro", "f1_micro", "top1_in_labels", "subset_accuracy", "hamming_loss")
WITH_CI = (*RANKED, *COUNTED)
METRIC_LABELS = {
    "map_macro": "mAP (macro)",
    "auc_macro": "macro ROC-AUC",
    "f1_macro": "macro F1",
    "f1_micro": "micro F1",
    "top1_in_labels": "top-1 in labels",
    "subset_accuracy": "subset accuracy",
    "hamming_loss": "Hamming loss",
}
_RESAMPLE_BLOCK = 256  # resamples per cumulative-sum block of the AP/AUC computation (memory ~ block x images)
UNIT = "video (the predictions' group column): the unit of resampling and of every test"
CI_METHOD = (
    "cluster (video) percentile bootstrap: test videos resampled with replacement, the same resamples for every "
    "row; every score recomputed exactly on the resampled images (video multiplicities as weights)"
)
TEST_METHOD = (
    "paired video swap permutation test of mAP and macro ROC-AUC (each video's predictions of the two models "
    "swapped at random); with several folds or seeds also the corrected resampled t-test (Nadeau & Bengio 2003) "
    "on per-(seed, fold) differences, while the swap test uses the pooled out-of-fold predictions; one Holm "
    "family over all tests"
)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class LabelModelExtra:
    """What a model row carries beyond the scores (``tta``: its TTA settings, TTA rows only)."""

    architecture: str | None
    train_seconds: float | None
    eval_seconds: float | None
    tta: Any = None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> LabelModelExtra:
        timing = doc.get("timing", {})
        return cls(doc.get("architecture"), timing.get("train_seconds"), timing.get("eval_seconds"), doc.get("tta"))

    def to_dict(self) -> dict[str, Any]:
        extra = asdict(self)
        if self.tta is None:
            del extra["tta"]
        return extra


@dataclass(frozen=True)
class LabelEnsembleExtra:
    members: str  # the averaged models, comma-separated
    decides: str = "labels decided by at least half of the members"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FrequencyBaselineExtra:
    decides: list[str]  # the labels with train prevalence >= 0.5 (usually none)
    scores: str = "train prevalence of each label"

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "decides": list(self.decides)}


@dataclass(frozen=True)
class LabelRow:
    """One row of ``rows`` in the document: scores with intervals (None: undefined, or too few
    videos), the row's extras, and ``fold`` (mAP over the (seed, fold) runs, with several)."""

    name: str
    kind: str
    map_macro: float | None
    map_macro_ci: list[float] | None
    auc_macro: float | None
    auc_macro_ci: list[float] | None
    f1_macro: float | None
    f1_macro_ci: list[float] | None
    f1_micro: float | None
    f1_micro_ci: list[float] | None
    top1_in_labels: float | None
    top1_in_labels_ci: list[float] | None
    subset_accuracy: float | None
    subset_accuracy_ci: list[float] | None
    hamming_loss: float | None
    hamming_loss_ci: list[float] | None
    ece: float | None
    weights: Any
    n_test: int
    design_effect: float | None
    extra: Any
    fold: FoldSpread | None

    def to_dict(self) -> dict[str, Any]:
        """The document's keys in the published order: scores, extras, then the fold spread."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fold", "extra")}
        row.update(self.extra.to_dict())
        if self.fold is not None:
            row.update(self.fold.to_dict("map_macro"))
        return row


# --------------------------------------------------------------------------- loading


def _multi_hot(frame, column: str, path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """A 0/1 list column as a bool array [seeds, images, labels]."""
    if column not in frame.columns:
        raise UserError(f"predictions file {path}: missing column {column} (multi-label run; re-run evaluate_model)")
    rows = frame[column].to_list()
    if {len(r) for r in rows} != {shape[2]}:
        raise UserError(f"predictions file {path}: {column} rows must have {shape[2]} entries")
    values = np.asarray(np.stack(rows), dtype=np.int64)
    if ((values != 0) & (values != 1)).any():
        raise UserError(f"predictions file {path}: {column} holds values other than 0 and 1")
    return values.reshape(shape).astype(bool)


def read_multilabel_model(metrics_path: str, predictions_path: str, class_names: list[str]) -> tuple[Model, TestSet]:
    """One model's metrics document, probabilities [S, n, C] and decisions [S, n, C] (image_id order);
    its test set carries the true multi-hot [n, C]."""
    doc = read_json(metrics_path, "metrics file")
    if doc.get("task") != MULTILABEL:
        raise UserError(
            f"metrics file {metrics_path}: task {doc.get('task')!r}, but the label map says {MULTILABEL} "
            "(stale file? re-run evaluate_model)"
        )
    predictions = read_model_predictions(doc, metrics_path, predictions_path, class_names)
    shape = predictions.probs.shape
    truth = _multi_hot(predictions.frame, "true_multi_hot", predictions_path, shape)
    if (truth != truth[0]).any():
        raise UserError(f"predictions file {predictions_path}: true_multi_hot differs between seeds")
    hot = _multi_hot(predictions.frame, "pred_multi_hot", predictions_path, shape)
    model = Model(doc["model"], "model", doc, hot, predictions.probs)
    return model, replace(predictions.test_set, multi_hot=truth[0])


def load_multilabel_models(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], class_names: list[str]
) -> tuple[list[Model], TestSet]:
    """Every model on one test set (with the same true multi-hot); return (models, test set)."""
    return load_models(metrics_paths, predictions_paths, partial(read_multilabel_model, class_names=class_names))


def train_prevalence(split: SplitReport, class_names: list[str]) -> np.ndarray:
    """Train prevalence of each label (images carrying it / images).

    Holdout: the train bucket. k folds: every run's training buckets pooled, the label counts summed
    as the multiclass baselines sum class counts (SplitReport.train_class_counts) and the images
    likewise, i.e. the image-weighted mean training prevalence of the k runs. One constant baseline
    for every test image: a per-fold prevalence would give the pooled out-of-fold scores a fold
    effect, and the baseline's AUC would no longer be 0.5. Image counts: ``counts.<bucket>``.
    """
    counts = split.train_class_counts()
    images = split.images_in(split.train_buckets(), "train prevalence")
    prevalence = np.array([counts.get(c, 0) for c in class_names], dtype=np.float64) / max(1, images)
    if (prevalence > 1).any():
        raise UserError(f"split report {split.path}: class_counts exceed images in the train buckets")
    return prevalence


def _rows(models: list[Model], prevalence: np.ndarray, class_names: list[str], *, ensemble: bool) -> list[Row]:
    """The models (+ TTA rows), their ensemble (2+ plain models) and the label-frequency baseline,
    each with probabilities and decisions [seeds, images, labels]."""
    rows = model_rows(models, LabelModelExtra.of)
    plain = plain_models(models)
    if ensemble and len(plain) >= 2:
        probs = np.mean([m.probs for m in plain], axis=0)
        decided = np.mean([m.decisions for m in plain], axis=0) >= 0.5
        members = LabelEnsembleExtra(", ".join(m.name for m in plain))
        weights = f"mean of {len(plain)} models"
        rows.append(Row(ENSEMBLE, "ensemble", probs, decided, weights, members, comparable=True))
    shape = models[0].probs.shape
    baseline_extra = FrequencyBaselineExtra([c for c, p in zip(class_names, prevalence) if p >= 0.5])
    baseline_probs, baseline_decisions = np.broadcast_to(prevalence, shape), np.broadcast_to(prevalence >= 0.5, shape)
    rows.append(Row(BASELINE, "baseline", baseline_probs, baseline_decisions, "none", baseline_extra, comparable=False))
    return rows


# --------------------------------------------------------------------------- weighted scores


def _ranked(scores: np.ndarray, positive: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """One label's items in descending score order: their unit codes, positive flags, and the last
    item of each block of tied scores (where the precision-recall and ROC curves have a point)."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])
    return codes[order], positive[order].astype(np.float64), ends


def _ap_auc(ranked: tuple[np.ndarray, ...], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average precision and ROC-AUC [B] of one label under unit weights [B, units] (NaN where
    undefined). AP = sum over thresholds of recall step x precision (scikit-learn's
    average_precision_score); AUC = P(positive above negative) with ties counting half."""
    codes, positive, ends = ranked
    w = weights[:, codes]
    tp = np.cumsum(w * positive, axis=1)[:, ends]
    fp = np.cumsum(w, axis=1)[:, ends] - tp
    d_tp = np.diff(tp, axis=1, prepend=0.0)
    d_fp = np.diff(fp, axis=1, prepend=0.0)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=d_tp > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_pos > 0, (d_tp * precision).sum(axis=1) / n_pos, np.nan)
        above = (d_tp * (n_neg[:, None] - fp + 0.5 * d_fp)).sum(axis=1)
        auc = np.where((n_pos > 0) & (n_neg > 0), above / (n_pos * n_neg), np.nan)
    return ap, auc


def _label_scores(probs: np.ndarray, truth: np.ndarray, codes: np.ndarray, weights: np.ndarray) -> tuple:
    """Per-label AP and AUC [B, C] under unit weights [B, units], in blocks of resamples."""
    ap = np.full((len(weights), truth.shape[1]), np.nan)
    auc = np.full_like(ap, np.nan)
    for c in range(truth.shape[1]):
        ranked = _ranked(probs[:, c], truth[:, c], codes)
        for start in range(0, len(weights), _RESAMPLE_BLOCK):
            block = slice(start, start + _RESAMPLE_BLOCK)
            ap[block, c], auc[block, c] = _ap_auc(ranked, weights[block])
    return ap, auc


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over labels (last axis) where defined; NaN where no label is."""
    defined = np.isfinite(values)
    total = np.where(defined, values, 0.0).sum(axis=-1)
    return np.where(defined.any(axis=-1), total / np.maximum(defined.sum(axis=-1), 1), np.nan)


def _per_group(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """[G, m] sums of the columns of ``values`` [n, m] per group."""
    values = np.asarray(values, dtype=np.float64).reshape(len(codes), -1)
    return np.column_stack([np.bincount(codes, weights=v, minlength=n_groups) for v in values.T])


def _decision_counts(probs: np.ndarray, hot: np.ndarray, truth: np.ndarray, codes: np.ndarray, n_groups: int):
    """Per group [G, 2C + 3]: true positives and decisions per label, exact matches, top-1 hits and
    wrong (image, label) decisions."""
    top1 = truth[np.arange(len(truth)), probs.argmax(axis=1)]
    columns = np.column_stack([hot & truth, hot, (hot == truth).all(axis=1), top1, (hot != truth).sum(axis=1)])
    return _per_group(codes, columns, n_groups)


def _count_scores(truth_sums: np.ndarray, sums: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Decision scores from weighted sums: truth [..., C + 1] (positives per label, images) and a
    row's [..., 2C + 3] (see _decision_counts). Macro F1 over labels present in truth or decisions."""
    positives, images = truth_sums[..., :k], truth_sums[..., k]
    tp, decided = sums[..., :k], sums[..., k : 2 * k]
    denominator = positives.sum(axis=-1) + decided.sum(axis=-1)
    return {
        "f1_macro": clusterstats.scores_from_counts(positives, tp, decided)["f1_macro"],
        "f1_micro": np.divide(2 * tp.sum(axis=-1), denominator, out=np.zeros_like(images), where=denominator > 0),
        "subset_accuracy": sums[..., 2 * k] / images,
        "top1_in_labels": sums[..., 2 * k + 1] / images,
        "hamming_loss": sums[..., 2 * k + 2] / (images * k),
    }


def _row_scores(
    probs: np.ndarray, decisions: np.ndarray, truth: np.ndarray, codes: np.ndarray, truth_groups, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every score [B] of one row (probabilities and decisions [seeds, n, C]) under group weights
    [B, G], averaged over seeds; ``ap`` [B, C]."""
    n_groups, k = truth_groups.shape[0], truth.shape[1]
    truth_sums = weights @ truth_groups
    per_seed = []
    for seed_probs, hot in zip(probs, decisions):
        ap, auc = _label_scores(seed_probs, truth, codes, weights)
        counts = _decision_counts(seed_probs, hot, truth, codes, n_groups)
        scores = _count_scores(truth_sums, weights @ counts, k)
        scores.update(map_macro=_macro(ap), auc_macro=_macro(auc), ap=ap)
        per_seed.append(scores)
    return {name: np.mean([s[name] for s in per_seed], axis=0) for name in per_seed[0]}


# --------------------------------------------------------------------------- resampling and tests


class _Units:
    """The test set reduced to videos: image -> group code, per-group truth counts [G, C + 1]."""

    def __init__(self, test_set: TestSet, truth: np.ndarray):
        self.codes, self.n_groups = clusterstats.group_codes(test_set.groups)
        self.truth = truth
        self.truth_groups = np.column_stack(
            [_per_group(self.codes, truth, self.n_groups), np.bincount(self.codes, minlength=self.n_groups)]
        )

    def scores(self, probs: np.ndarray, decisions: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.asarray(weights, dtype=np.float64)
        return _row_scores(probs, decisions, self.truth, self.codes, self.truth_groups, weights)


def _bootstrap(rows: Sequence[Row], units: _Units, *, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled scores [B, rows] of every row from one set of video resamples."""
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in WITH_CI}
    for weights in clusterstats.group_weight_chunks(units.n_groups, samples, seed):
        scores = [units.scores(row.probs, row.decisions, weights) for row in rows]
        for name in WITH_CI:
            blocks[name].append(np.stack([s[name] for s in scores], axis=1))
    return {name: np.concatenate(values) for name, values in blocks.items()}


def _swap_scores(row_a: Row, row_b: Row, units: _Units, swaps: np.ndarray) -> dict[str, np.ndarray]:
    """Score of A* minus B* [P] per tested score, where A* holds B's predictions of the swapped videos
    (swaps [P, G] 0/1) and A's elsewhere: a 0/1 weighting of the pooled predictions of both."""
    probs = np.concatenate([row_a.probs, row_b.probs], axis=1)
    decisions = np.concatenate([row_a.decisions, row_b.decisions], axis=1)
    codes = np.concatenate([units.codes, units.codes + units.n_groups])
    truth = np.concatenate([units.truth, units.truth])
    truth_groups = np.concatenate([units.truth_groups, units.truth_groups])
    weights_a = np.hstack([1.0 - swaps, swaps]).astype(np.float64)
    score_a = _row_scores(probs, decisions, truth, codes, truth_groups, weights_a)
    score_b = _row_scores(probs, decisions, truth, codes, truth_groups, 1.0 - weights_a)
    return {name: score_a[name] - score_b[name] for name in RANKED}


def _swap_p_values(pairs, rows_by_name: dict[str, Row], units: _Units, observed, *, permutations: int, seed: int):
    """Video swap permutation p-values of every pair and tested score (the same swaps for all)."""
    permuted: dict[tuple[str, str], dict[str, list]] = {pair: {m: [] for m in RANKED} for pair in pairs}
    for swaps in clusterstats.swap_chunks(units.n_groups, permutations, seed):
        for a, b in pairs:
            for name, values in _swap_scores(rows_by_name[a], rows_by_name[b], units, swaps).items():
                permuted[(a, b)][name].append(values)
    p_values = {}
    for a, b in pairs:
        p_values[(a, b)] = {
            m: float(
                clusterstats.swap_permutation_p(observed[a][m] - observed[b][m], np.concatenate(permuted[(a, b)][m]))
            )
            for m in RANKED
        }
    return p_values


def _fold_scores(row: Row, units: _Units, test_set: TestSet) -> dict[str, np.ndarray]:
    """mAP and macro AUC per (seed, fold), flattened in (seed, fold) order (as the multiclass comparison)."""
    values: dict[str, list[np.ndarray]] = {m: [] for m in RANKED}
    for s, folds in enumerate(test_set.folds):
        fold_of_group = np.zeros(units.n_groups, dtype=np.int64)
        fold_of_group[units.codes] = folds
        weights = (np.unique(folds)[:, None] == fold_of_group[None, :]).astype(np.float64)
        scores = units.scores(row.probs[s : s + 1], row.decisions[s : s + 1], weights)
        for m in RANKED:
            values[m].append(scores[m])
    return {m: np.concatenate(v) for m, v in values.items()}


# --------------------------------------------------------------------------- the document


def _number(value: Any) -> float | None:
    """JSON-safe float: None for NaN/None."""
    return None if value is None or not np.isfinite(value) else float(value)


class _Scores(NamedTuple):
    """Every row scored: point estimates by row name (with ``ap`` per label and ``ece``), resampled
    scores [B, rows] (None: too few videos for intervals), per-(seed, fold) scores (None: one run)."""

    point: dict[str, dict[str, Any]]
    resampled: dict[str, np.ndarray] | None
    fold_scores: dict[str, dict[str, np.ndarray]] | None


def _label_row(row: Row, column: int, scores: _Scores, n_test: int, level: float) -> LabelRow:
    """A row's scores with their intervals; ``column``: the row's column of the resampled scores."""
    point = scores.point[row.name]
    estimates = {metric: _number(point[metric]) for metric in WITH_CI}
    intervals = {
        f"{metric}_ci": row_interval(scores.resampled, metric, column, estimate, level)
        for metric, estimate in estimates.items()
    }
    design_effect = None
    if scores.resampled is not None:
        resampled_top1 = scores.resampled["top1_in_labels"][:, column]
        design_effect = clusterstats.design_effect(resampled_top1, estimates["top1_in_labels"], n_test)
    fold = None
    if scores.fold_scores is not None:
        values = scores.fold_scores[row.name]["map_macro"]
        fold = FoldSpread(float(np.nanmean(values)), float(np.nanstd(values, ddof=1)))
    return LabelRow(
        name=row.name,
        kind=row.kind,
        **estimates,
        **intervals,
        ece=_number(point["ece"]),
        weights=row.weights,
        n_test=n_test,
        design_effect=design_effect,
        extra=row.extra,
        fold=fold,
    )


def _ece(probs: np.ndarray, truth: np.ndarray) -> float:
    """Expected calibration error of every (image, label) probability [seeds, n, C] as a binary event (seed mean)."""
    return float(np.mean([clusterstats.expected_calibration_error(*binary_events(p, truth)) for p in probs]))


def binary_events(probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, one-column probabilities) such that clusterstats' top-class reliability of them is
    the reliability of P(label) itself: confidence = p, "correct" = the label is present."""
    return (np.asarray(truth) == 0).ravel().astype(np.int64), np.asarray(probs, dtype=np.float64).reshape(-1, 1)


def _per_label_table(rows: list[Row], point: dict, class_names: list[str], units: _Units, prevalence) -> dict:
    support = units.truth.sum(axis=0).astype(int)
    return {
        "labels": class_names,
        "support": dict(zip(class_names, support.tolist())),
        "train_prevalence": dict(zip(class_names, prevalence.tolist())),
        "ap": {r.name: dict(zip(class_names, map(_number, point[r.name]["ap"]))) for r in rows},
    }


def _caveats(document: dict[str, Any]) -> list[str]:
    caveats = []
    if document["narration_labels"]:
        caveats.append(
            "Labels are per video: Quilt-1M's pathology lists come from each video's narration text, not from the "
            "image, so every frame carries its video's whole list whether or not the frame shows it; the scores "
            "measure agreement with the narration."
        )
    if document["synthetic"]:
        caveats.append("These results come from the synthetic demo data set: they test the pipeline, not any model.")
    absent = [c for c, n in document["per_label"]["support"].items() if n == 0]
    if absent:
        caveats.append(
            f"No test image carries {', '.join(absent)}: their AP and ROC-AUC are null and left out of the macro means."
        )
    for row in document["rows"]:
        tests = [t for t in document["vs_baseline"] if t["a"] == row["name"]]
        if tests and not any(t["better_than_baseline"] for t in tests):
            caveats.append(
                f"{row['name']} is not significantly better than the label-frequency baseline on mAP or macro "
                "ROC-AUC (video-level tests, Holm-adjusted)."
            )
    video_caveat = video_count_caveat(document)
    if video_caveat is not None:
        caveats.append(video_caveat)
    return caveats


def _score_rows(rows: list[Row], units: _Units, test_set: TestSet, *, seed: int, bootstrap_samples: int) -> _Scores:
    """Point estimates (with ``ap`` per label and ``ece``), resampled scores and per-fold scores."""
    ones = np.ones((1, units.n_groups))
    point = {r.name: {k: v[0] for k, v in units.scores(r.probs, r.decisions, ones).items()} for r in rows}
    for row in rows:
        point[row.name]["ece"] = _ece(row.probs, units.truth)
    resampled = None  # too few videos: no interval (see clusterstats.MIN_GROUPS_FOR_INTERVALS)
    if units.n_groups >= clusterstats.MIN_GROUPS_FOR_INTERVALS:
        resampled = _bootstrap(rows, units, samples=bootstrap_samples, seed=seed)
    fold_scores = {r.name: _fold_scores(r, units, test_set) for r in rows} if test_set.several_runs else None
    return _Scores(point, resampled, fold_scores)


def _tests(
    rows: list[Row], units: _Units, scores: _Scores, ratio: float | None, *, permutations: int, seed: int, alpha: float
) -> tuple[list[TestEntry], list[TestEntry], int]:
    """(pairwise tests, tests against the baseline, video swaps per test), decided as one Holm family."""
    pairs, vs_baseline_pairs = comparisons(rows, BASELINE)
    by_name = {r.name: r for r in rows}
    index = {r.name: i for i, r in enumerate(rows)}
    evidence = Evidence(scores.point, scores.resampled, index, scores.fold_scores, ratio, 1.0 - alpha)
    swaps = family_swaps(permutations, pairs + vs_baseline_pairs, RANKED, evidence, alpha)
    swap_p = _swap_p_values(pairs + vs_baseline_pairs, by_name, units, scores.point, permutations=swaps, seed=seed)
    pairwise = paired_test_entries(pairs, RANKED, evidence, swap_p)
    vs_baseline = paired_test_entries(vs_baseline_pairs, RANKED, evidence, swap_p)
    decide(pairwise + vs_baseline, alpha, METRIC_LABELS)
    return pairwise, vs_baseline, swaps


def _head(test_set: TestSet, units: _Units, class_names: list[str], *, synthetic: bool, narration_labels: bool):
    """The document's head: task, unit, images, predictions, videos, runs, labels and their provenance."""
    n = len(units.truth)
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "task": MULTILABEL,
        "unit": UNIT,
        "n_test": n,
        "n_predictions": n * len(test_set.seeds),
        "n_groups": units.n_groups,
        "folds": test_set.n_folds,
        "seeds": len(test_set.seeds),
        "class_names": class_names,
        "label_cardinality": float(units.truth.sum(axis=1).mean()),
        "synthetic": bool(synthetic),
        "narration_labels": bool(narration_labels),
    }


def _method(*, seed: int, bootstrap_samples: int, permutations: int, alpha: float) -> dict[str, Any]:
    """The document's method block."""
    return {
        "seed": int(seed),
        "bootstrap_samples": int(bootstrap_samples),
        "permutations": int(permutations),
        "alpha": float(alpha),
        "ci_level": 1.0 - alpha,
        "ci_method": CI_METHOD,
        "test_method": TEST_METHOD,
        "tested_metrics": list(RANKED),
        "pooling": POOLING,
        "ece_bins": clusterstats.ECE_BINS,
    }


def build_multilabel_comparison(
    models: list[Model],
    test_set: TestSet,
    truth: np.ndarray,
    class_names: list[str],
    prevalence: np.ndarray,
    *,
    seed: int,
    bootstrap_samples: int,
    permutations: int,
    alpha: float,
    ensemble: bool = True,
    synthetic: bool = False,
    split_ratio: float | None = None,
    narration_labels: bool = True,
) -> dict[str, Any]:
    """The comparison document of loaded models (probabilities and decisions [seeds, n, C]; ``tta``
    models carry ``tta_of``) on ``truth`` [n, C]; reads and writes nothing. ``narration_labels``:
    the lists are Quilt's per-video narration lists (a caveat says so)."""
    truth = as_bool(truth, "true multi-hot")
    models = [replace(m, decisions=as_bool(m.decisions, f"{m.name}: decisions")) for m in models]
    if not truth.any():
        raise UserError("compare_models: no test image carries any label (empty multi-hot targets)")
    rows = _rows(models, prevalence, class_names, ensemble=ensemble)
    units = _Units(test_set, truth)
    scores = _score_rows(rows, units, test_set, seed=seed, bootstrap_samples=bootstrap_samples)
    ratio = t_test_ratio(test_set, split_ratio)
    pairwise, vs_baseline, swaps = _tests(rows, units, scores, ratio, permutations=permutations, seed=seed, alpha=alpha)
    label_rows = [_label_row(row, i, scores, len(truth), 1.0 - alpha) for i, row in enumerate(rows)]
    document = {
        **_head(test_set, units, class_names, synthetic=synthetic, narration_labels=narration_labels),
        **_method(seed=seed, bootstrap_samples=bootstrap_samples, permutations=swaps, alpha=alpha),
        "permutations_requested": int(permutations),
        "test_train_ratio": ratio,
        "rows": [r.to_dict() for r in label_rows],
        "per_label": _per_label_table(rows, scores.point, class_names, units, prevalence),
        "pairwise": [t.to_dict() for t in pairwise],
        "vs_baseline": [t.to_dict("better_than_baseline") for t in vs_baseline],
    }
    document["caveats"] = _caveats(document)
    return document


# The probe stage's multi-label summary (quiltflow.compare.probe_summary) scores and tests its rows
# with this module's own code: the video units, their bootstrap and the swap test.
VideoUnits = _Units
# The video-level comparison (quiltflow.compare.video_unit) reads its multi-hot columns so too.
multi_hot_column = _multi_hot
bootstrap_rows = _bootstrap
swap_p_values = _swap_p_values
