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
block). Paired tests: the video swap permutation test of quiltflow.compare.multiclass on ``map_macro`` and
``auc_macro``: swapping two models' predictions in a set of videos is a 0/1 weighting of the pooled
predictions of both models, so the same weighted AP/AUC serve. With several folds or seeds the
corrected resampled t-test on per-(seed, fold) differences joins them; all tests are one Holm
family. Seeds: as in quiltflow.compare.multiclass, scores are computed per seed and averaged.

Metrics JSON files are read as written by evaluate_model (its schema validation is that rule's
job); the multi-hot columns ``true_multi_hot``/``pred_multi_hot`` come from the predictions.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from quiltflow.compare.mdhtml import markdown_to_html
from quiltflow.compare.multiclass import (
    COMPARISON_SCHEMA_VERSION,
    ENSEMBLE,
    POOLING,
    TTA_KIND,
    TestSet,
    _by_seed,
    _check_same_test_set,
    _decide,
    _mark_tta,
    _read_predictions_of,
    _read_split_report,
    _test_entries,
    _test_train_ratio,
    check_file_lists,
    clusterstats,
    plots,
    too_few_videos,
    write_tables,
)
from quiltflow.compare.report import CURVES_CAPTION, difference_text
from quiltflow.core.cv import run_buckets
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, read_label_map
from quiltflow.core.tasks import MULTILABEL
from quiltflow.records.predictions import read_predictions

BASELINE = "label_frequency_baseline"
RANKED = ("map_macro", "auc_macro")  # the tested scores
COUNTED = ("f1_macro", "f1_micro", "top1_in_labels", "subset_accuracy", "hamming_loss")
WITH_CI = (*RANKED, *COUNTED)
METRIC_LABELS = {
    "map_macro": "mAP (macro)", "auc_macro": "macro ROC-AUC", "f1_macro": "macro F1", "f1_micro": "micro F1",
    "top1_in_labels": "top-1 in labels", "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss",
}  # fmt: skip
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
AP_CAPTION = "Average precision of each label per model; black ticks: the label-frequency baseline (test prevalence)."
METRICS_CAPTION = "mAP and macro ROC-AUC per row with cluster-bootstrap intervals over videos (hatched: baseline)."


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


def _bool_matrix(values: Any, name: str) -> np.ndarray:
    """A 0/1 array (bool, or integers such as multilabel.multi_hot's int8) as bool. Every score here
    uses ``~`` and ``&``, which are bitwise on integers (~1 == -2): the entry points convert once."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if ((array != 0) & (array != 1)).any():
        raise UserError(f"{name}: values other than 0 and 1")
    return array == 1


def _load_one(metrics_path: str, predictions_path: str, class_names: list[str]) -> tuple[dict, TestSet]:
    """One model's metrics document, probabilities [S, n, C] and decisions [S, n, C] (image_id order)."""
    doc = read_json(metrics_path, "metrics file")
    if doc.get("task") != MULTILABEL:
        raise UserError(
            f"metrics file {metrics_path}: task {doc.get('task')!r}, but the label map says {MULTILABEL} "
            "(stale file? re-run evaluate_model)"
        )
    test_set, _, probs = _read_predictions_of(doc, metrics_path, predictions_path, class_names)
    frame, _ = _by_seed(read_predictions(predictions_path), predictions_path)
    truth = _multi_hot(frame, "true_multi_hot", predictions_path, probs.shape)
    if (truth != truth[0]).any():
        raise UserError(f"predictions file {predictions_path}: true_multi_hot differs between seeds")
    hot = _multi_hot(frame, "pred_multi_hot", predictions_path, probs.shape)
    model = {"name": doc["model"], "kind": "model", "doc": doc, "probs": probs, "hot": hot, "truth": truth[0]}
    return model, test_set


def _load_models(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], class_names: list[str]
) -> tuple[list[dict[str, Any]], TestSet, np.ndarray]:
    """Every model on one test set; return (models, test set, true multi-hot [n, C])."""
    check_file_lists(metrics_paths, predictions_paths)
    models: list[dict[str, Any]] = []
    first: TestSet | None = None
    for metrics_path, predictions_path in zip(metrics_paths, predictions_paths):
        model, test_set = _load_one(metrics_path, predictions_path, class_names)
        if any(m["name"] == model["name"] for m in models):
            raise UserError(f"metrics file {metrics_path}: model {model['name']!r} listed twice")
        if first is None:
            first = test_set
        else:
            _check_same_test_set(first, test_set)
            if not np.array_equal(model["truth"], models[0]["truth"]):
                raise UserError(
                    f"predictions file {predictions_path}: true_multi_hot differs from {first.predictions_path}"
                )
        models.append(model)
    return models, first, models[0]["truth"]


def _train_prevalence(split_report_path: str, class_names: list[str]) -> tuple[np.ndarray, float | None]:
    """Train prevalence of each label (images carrying it / images) and the split's n_test/n_train.

    Holdout: the train bucket. k folds: every run's training buckets pooled, the label counts summed
    as quiltflow.compare.multiclass._read_split_report sums class counts and the images likewise, i.e. the
    image-weighted mean training prevalence of the k runs. One constant baseline for every test
    image: a per-fold prevalence would give the pooled out-of-fold scores a fold effect, and the
    baseline's AUC would no longer be 0.5. Image counts: ``counts.<bucket>``.
    """
    counts, ratio = _read_split_report(split_report_path)
    report = read_json(split_report_path, "split report")
    folds = int(report.get("folds", 1))
    sizes = report.get("counts") or {}
    train = [bucket for fold in range(folds) for bucket in run_buckets(fold, folds)["train"]]
    missing = [bucket for bucket in train if not isinstance(sizes.get(bucket), int | float)]
    if missing:
        raise UserError(f"split report {split_report_path}: missing key counts.{missing[0]} (train prevalence)")
    prevalence = np.array([counts.get(c, 0) for c in class_names], dtype=np.float64) / max(
        1, sum(sizes[b] for b in train)
    )
    if (prevalence > 1).any():
        raise UserError(f"split report {split_report_path}: class_counts exceed images in the train buckets")
    return prevalence, ratio


# --------------------------------------------------------------------------- rows to score


def _extras(doc: dict[str, Any]) -> dict[str, Any]:
    extras = {
        "architecture": doc.get("architecture"),
        **{k: doc.get("timing", {}).get(k) for k in ("train_seconds", "eval_seconds")},
    }
    if "tta" in doc:
        extras["tta"] = doc["tta"]
    return extras


def _rows(models: list[dict], prevalence: np.ndarray, class_names: list[str], *, ensemble: bool) -> list[dict]:
    """The models (+ TTA rows), their ensemble (2+ plain models) and the label-frequency baseline,
    each with ``probs`` and ``hot`` (decisions) [seeds, images, labels]."""
    rows = [
        {**m, "weights": m["doc"].get("weights"), "extra": _extras(m["doc"]), "comparable": m["kind"] == "model"}
        for m in models
    ]
    plain = [m for m in models if m["kind"] == "model"]
    if ensemble and len(plain) >= 2:
        rows.append(
            {"name": ENSEMBLE, "kind": "ensemble", "probs": np.mean([m["probs"] for m in plain], axis=0),
             "hot": np.mean([m["hot"] for m in plain], axis=0) >= 0.5, "weights": f"mean of {len(plain)} models",
             "extra": {"members": ", ".join(m["name"] for m in plain),
                       "decides": "labels decided by at least half of the members"}, "comparable": True}
        )  # fmt: skip
    shape = models[0]["probs"].shape
    rows.append(
        {"name": BASELINE, "kind": "baseline", "probs": np.broadcast_to(prevalence, shape),
         "hot": np.broadcast_to(prevalence >= 0.5, shape), "weights": "none", "comparable": False,
         "extra": {"scores": "train prevalence of each label",
                   "decides": [c for c, p in zip(class_names, prevalence) if p >= 0.5]}}
    )  # fmt: skip
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


def _row_scores(row: dict, truth: np.ndarray, codes: np.ndarray, truth_groups: np.ndarray, weights: np.ndarray):
    """Every score [B] of one row under group weights [B, G], averaged over seeds; ``ap`` [B, C]."""
    n_groups, k = truth_groups.shape[0], truth.shape[1]
    truth_sums = weights @ truth_groups
    per_seed = []
    for probs, hot in zip(row["probs"], row["hot"]):
        ap, auc = _label_scores(probs, truth, codes, weights)
        scores = _count_scores(truth_sums, weights @ _decision_counts(probs, hot, truth, codes, n_groups), k)
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

    def scores(self, row: dict, weights: np.ndarray) -> dict[str, np.ndarray]:
        return _row_scores(row, self.truth, self.codes, self.truth_groups, np.asarray(weights, dtype=np.float64))


def _bootstrap(rows: list[dict], units: _Units, *, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled scores [B, rows] of every row from one set of video resamples."""
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in WITH_CI}
    for weights in clusterstats.group_weight_chunks(units.n_groups, samples, seed):
        scores = [units.scores(row, weights) for row in rows]
        for name in WITH_CI:
            blocks[name].append(np.stack([s[name] for s in scores], axis=1))
    return {name: np.concatenate(values) for name, values in blocks.items()}


def _swap_scores(row_a: dict, row_b: dict, units: _Units, swaps: np.ndarray) -> dict[str, np.ndarray]:
    """Score of A* minus B* [P] per tested score, where A* holds B's predictions of the swapped videos
    (swaps [P, G] 0/1) and A's elsewhere: a 0/1 weighting of the pooled predictions of both."""
    pooled = {
        "probs": np.concatenate([row_a["probs"], row_b["probs"]], axis=1),
        "hot": np.concatenate([row_a["hot"], row_b["hot"]], axis=1),
    }
    codes = np.concatenate([units.codes, units.codes + units.n_groups])
    truth = np.concatenate([units.truth, units.truth])
    truth_groups = np.concatenate([units.truth_groups, units.truth_groups])
    weights_a = np.hstack([1.0 - swaps, swaps]).astype(np.float64)
    score_a = _row_scores(pooled, truth, codes, truth_groups, weights_a)
    score_b = _row_scores(pooled, truth, codes, truth_groups, 1.0 - weights_a)
    return {name: score_a[name] - score_b[name] for name in RANKED}


def _swap_p_values(pairs, rows_by_name, units: _Units, observed, *, permutations: int, seed: int) -> dict:
    """Video swap permutation p-values of every pair and tested score (the same swaps for all)."""
    permuted: dict[tuple[str, str], dict[str, list]] = {pair: {m: [] for m in RANKED} for pair in pairs}
    for swaps in clusterstats.swap_chunks(units.n_groups, permutations, seed):
        for a, b in pairs:
            for name, values in _swap_scores(rows_by_name[a], rows_by_name[b], units, swaps).items():
                permuted[(a, b)][name].append(values)
    return {
        (a, b): {
            m: float(
                clusterstats.swap_permutation_p(observed[a][m] - observed[b][m], np.concatenate(permuted[(a, b)][m]))
            )
            for m in RANKED
        }
        for a, b in pairs
    }


def _fold_scores(row: dict, units: _Units, test_set: TestSet) -> dict[str, np.ndarray]:
    """mAP and macro AUC per (seed, fold), flattened in (seed, fold) order (as quiltflow.compare.multiclass)."""
    values: dict[str, list[np.ndarray]] = {m: [] for m in RANKED}
    for s, folds in enumerate(test_set.folds):
        fold_of_group = np.zeros(units.n_groups, dtype=np.int64)
        fold_of_group[units.codes] = folds
        weights = (np.unique(folds)[:, None] == fold_of_group[None, :]).astype(np.float64)
        scores = units.scores({"probs": row["probs"][s : s + 1], "hot": row["hot"][s : s + 1]}, weights)
        for m in RANKED:
            values[m].append(scores[m])
    return {m: np.concatenate(v) for m, v in values.items()}


def _pairs(rows: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(model pairs incl. the ensemble, then each TTA row vs its model; each model vs the baseline)."""
    names = [r["name"] for r in rows if r["comparable"]]
    tta_pairs = [(r["name"], r["tta_of"]) for r in rows if r["kind"] == TTA_KIND]
    return list(combinations(names, 2)) + tta_pairs, [(name, BASELINE) for name in names]


# --------------------------------------------------------------------------- the document


def _number(value: Any) -> float | None:
    """JSON-safe float: None for NaN/None."""
    return None if value is None or not np.isfinite(value) else float(value)


def _row_document(row: dict, point: dict, resampled: dict | None, i: int, n_test: int, level: float) -> dict:
    """A row's scores with their intervals (None where the score is, or without ``resampled``: too few videos)."""
    document: dict[str, Any] = {"name": row["name"], "kind": row["kind"]}
    for metric in WITH_CI:
        estimate = _number(point[metric])
        interval = None
        if estimate is not None and resampled is not None:
            interval = clusterstats.percentile_ci(resampled[metric][:, i], estimate, level)
        document.update({metric: estimate, f"{metric}_ci": None if interval is None else list(interval)})
    top1 = document["top1_in_labels"]
    document.update(
        {"ece": _number(point["ece"]), "weights": row["weights"], "n_test": n_test,
         "design_effect": None if resampled is None
         else clusterstats.design_effect(resampled["top1_in_labels"][:, i], top1, n_test)}
    )  # fmt: skip
    return {**document, **row["extra"]}


def _ece(row: dict, truth: np.ndarray) -> float:
    """Expected calibration error of every (image, label) probability as a binary event (seed mean)."""
    return float(
        np.mean([clusterstats.expected_calibration_error(*_binary_events(probs, truth)) for probs in row["probs"]])
    )


def _binary_events(probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, one-column probabilities) such that clusterstats' top-class reliability of them is
    the reliability of P(label) itself: confidence = p, "correct" = the label is present."""
    return (np.asarray(truth) == 0).ravel().astype(np.int64), np.asarray(probs, dtype=np.float64).reshape(-1, 1)


def _per_label_table(rows: list[dict], point: dict, class_names: list[str], units: _Units, prevalence) -> dict:
    support = units.truth.sum(axis=0).astype(int)
    return {
        "labels": class_names,
        "support": dict(zip(class_names, support.tolist())),
        "train_prevalence": dict(zip(class_names, prevalence.tolist())),
        "ap": {r["name"]: dict(zip(class_names, map(_number, point[r["name"]]["ap"]))) for r in rows},
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
    if document["n_groups"] < clusterstats.MIN_GROUPS_FOR_INTERVALS:
        caveats.append(too_few_videos(document["n_groups"], document["n_test"]))
    elif document["n_groups"] < 30:
        caveats.append(
            f"Only {document['n_groups']} test videos ({document['n_test']} images): the video is the unit, "
            "so intervals are wide and tests have little power."
        )
    return caveats


def _score_rows(rows: list[dict], units: _Units, test_set: TestSet, *, seed: int, bootstrap_samples: int):
    """Point estimates (with ``ap`` per label and ``ece``), resampled scores (None: too few videos),
    per-fold scores or None."""
    ones = np.ones((1, units.n_groups))
    point = {r["name"]: {k: v[0] for k, v in units.scores(r, ones).items()} for r in rows}
    for row in rows:
        point[row["name"]]["ece"] = _ece(row, units.truth)
    resampled = None  # too few videos: no interval (see clusterstats.MIN_GROUPS_FOR_INTERVALS)
    if units.n_groups >= clusterstats.MIN_GROUPS_FOR_INTERVALS:
        resampled = _bootstrap(rows, units, samples=bootstrap_samples, seed=seed)
    n_folds = max(len(np.unique(f)) for f in test_set.folds)
    several = n_folds * len(test_set.seeds) >= 2
    fold_scores = {r["name"]: _fold_scores(r, units, test_set) for r in rows} if several else None
    return point, resampled, fold_scores, n_folds


def _tests(rows, units, point, resampled, fold_scores, ratio, *, permutations, seed, alpha) -> tuple[list, list]:
    """Paired tests (pairwise, vs the baseline), Holm-adjusted as one family."""
    pairs, vs_baseline_pairs = _pairs(rows)
    by_name = {r["name"]: r for r in rows}
    swap_p = _swap_p_values(pairs + vs_baseline_pairs, by_name, units, point, permutations=permutations, seed=seed)
    index = {r["name"]: i for i, r in enumerate(rows)}
    args = (point, resampled, index, swap_p, fold_scores, ratio, 1.0 - alpha)
    pairwise = _test_entries(pairs, *args, metrics=RANKED)
    vs_baseline = _test_entries(vs_baseline_pairs, *args, metrics=RANKED)
    _decide(pairwise + vs_baseline, alpha, labels=METRIC_LABELS)
    for entry in vs_baseline:
        entry["better_than_baseline"] = entry["better"] == entry["a"]
    return pairwise, vs_baseline


def build_multilabel_comparison(
    models: list[dict[str, Any]], test_set: TestSet, truth: np.ndarray, class_names: list[str],
    prevalence: np.ndarray, *, seed: int, bootstrap_samples: int, permutations: int, alpha: float,
    ensemble: bool = True, synthetic: bool = False, split_ratio: float | None = None,
    narration_labels: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The comparison document of loaded models (``name, kind, doc, probs, hot`` [seeds, n, C]
    dicts; ``tta`` rows carry ``tta_of``) on ``truth`` [n, C]; reads and writes nothing.
    ``narration_labels``: the lists are Quilt's per-video narration lists (a caveat says so)."""
    truth = _bool_matrix(truth, "true multi-hot")
    models = [{**m, "hot": _bool_matrix(m["hot"], f"{m['name']}: decisions")} for m in models]
    if not truth.any():
        raise UserError("compare_models: no test image carries any label (empty multi-hot targets)")
    rows = _rows(models, prevalence, class_names, ensemble=ensemble)
    units = _Units(test_set, truth)
    point, resampled, fold_scores, n_folds = _score_rows(
        rows, units, test_set, seed=seed, bootstrap_samples=bootstrap_samples
    )
    ratio = _test_train_ratio(test_set, split_ratio) if fold_scores is not None else None
    if fold_scores is not None and ratio is None:
        raise UserError("split report: counts.train and counts.test are needed for the corrected t-test over seeds")
    pairwise, vs_baseline = _tests(
        rows, units, point, resampled, fold_scores, ratio, permutations=permutations, seed=seed, alpha=alpha
    )
    n = len(truth)
    row_documents = [_row_document(r, point[r["name"]], resampled, i, n, 1.0 - alpha) for i, r in enumerate(rows)]
    for document in row_documents if fold_scores is not None else []:
        values = fold_scores[document["name"]]["map_macro"]
        document.update(
            {"map_macro_fold_mean": float(np.nanmean(values)), "map_macro_fold_sd": float(np.nanstd(values, ddof=1))}
        )
    document = {
        "schema_version": COMPARISON_SCHEMA_VERSION, "task": MULTILABEL, "unit": UNIT, "n_test": n,
        "n_predictions": n * len(test_set.seeds), "n_groups": units.n_groups, "folds": n_folds,
        "seeds": len(test_set.seeds), "class_names": class_names, "label_cardinality": float(truth.sum(axis=1).mean()),
        "synthetic": bool(synthetic), "narration_labels": bool(narration_labels), "seed": int(seed),
        "bootstrap_samples": int(bootstrap_samples),
        "permutations": int(permutations), "alpha": float(alpha), "ci_level": 1.0 - alpha, "ci_method": CI_METHOD,
        "test_method": TEST_METHOD, "tested_metrics": list(RANKED), "pooling": POOLING, "ece_bins": clusterstats.ECE_BINS,
        "test_train_ratio": ratio, "rows": row_documents, "per_label": _per_label_table(rows, point, class_names, units, prevalence),
        "pairwise": pairwise, "vs_baseline": vs_baseline,
    }  # fmt: skip
    document["caveats"] = _caveats(document)
    return document


# --------------------------------------------------------------------------- tables


def _cell(value: float | None, ci: Sequence[float] | str | None = None) -> str:
    """A score, with its interval if ``ci`` is one ("n/a": an interval column without an interval)."""
    if value is None:
        return "–"
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} [n/a]" if isinstance(ci, str) else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _scores_table(document: dict[str, Any]) -> list[str]:
    pct = f"{document['ci_level']:.0%}"
    columns = ["model", "kind", *(f"{METRIC_LABELS[m]} [{pct} CI]" for m in WITH_CI), "ECE", "weights", "n_test"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in document["rows"]:
        cells = [
            r["name"],
            r["kind"],
            *(_cell(r[m], r[f"{m}_ci"] or "n/a") for m in WITH_CI),
            _cell(r["ece"]),
            str(r["weights"]),
            str(r["n_test"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _per_label_lines(document: dict[str, Any]) -> list[str]:
    table = document["per_label"]
    names = list(table["ap"])
    lines = ["| label | support | train prevalence | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 3)]
    for label in table["labels"]:
        cells = [label, str(table["support"][label]), f"{table['train_prevalence'][label]:.3f}"]
        lines.append("| " + " | ".join(cells + [_cell(table["ap"][n][label]) for n in names]) + " |")
    return lines


def render_markdown(document: dict[str, Any]) -> str:
    """Method, scores table, per-label AP table, tests with verdicts, caveats."""
    tests = document["pairwise"] + document["vs_baseline"]
    lines = [
        "# Model comparison (multi-label)", "",
        f"{document['n_test']} test images in {document['n_groups']} videos, {len(document['class_names'])} labels "
        f"(mean {document['label_cardinality']:.2f} per image). **The video is the unit**: {document['ci_method']} "
        f"({document['bootstrap_samples']} resamples, seed {document['seed']}); tests: {document['test_method']} "
        f"({document['permutations']} permutations, {len(tests)} tests, alpha={document['alpha']:g}). "
        "mAP and macro ROC-AUC average the labels with a positive test image; ECE: every (image, label) "
        f"probability as a binary event, {document['ece_bins']} bins.", "",
        *_scores_table(document), "", "## Average precision per label", "", *_per_label_lines(document), "",
        "## Models against each other", "",
    ]  # fmt: skip
    lines += [_test_line(t) for t in document["pairwise"]] or ["- Only one model: no pairwise test."]
    lines += [
        "",
        "## Models against the label-frequency baseline",
        "",
        *(_test_line(t) for t in document["vs_baseline"]),
    ]
    lines += ["", "## Caveats", "", *(f"- **Caveat:** {c}" for c in document["caveats"])]
    return "\n".join(lines) + "\n"


def _test_line(t: dict[str, Any]) -> str:
    difference = difference_text(t["difference"], t["difference_ci"])
    return f"- {t['verdict']}; {METRIC_LABELS[t['metric']]} difference {difference}."


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One row per model/baseline: each score, its CI bounds (empty = not defined), ECE, weights, n_test."""
    columns = [
        "model",
        "kind",
        *(f"{m}{s}" for m in WITH_CI for s in ("", "_ci_low", "_ci_high")),
        "ece",
        "design_effect",
        "weights",
        "n_test",
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            line = {"model": r["name"], "kind": r["kind"], "weights": r["weights"], "n_test": r["n_test"]}
            for m in WITH_CI:
                low, high = r[f"{m}_ci"] or (None, None)
                line.update({m: r[m], f"{m}_ci_low": low, f"{m}_ci_high": high})
            line.update(ece=r["ece"], design_effect=r["design_effect"])
            writer.writerow(
                {k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for k, v in line.items()}
            )


def _html(document: dict[str, Any], figures: Sequence[tuple[str, str]]) -> str:
    """The Markdown as an HTML fragment (table id comparison-table), the figures embedded at the end."""
    images = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode("ascii")}" '
        f'alt="{html.escape(c)}" style="max-width:100%"><figcaption>{html.escape(c)}</figcaption></figure>\n'
        for p, c in figures
    )
    return (
        '<meta charset="utf-8">\n' + markdown_to_html(render_markdown(document), table_id="comparison-table") + images
    )


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def plot_ranked_bars(rows: Sequence[dict], path: str | Path, *, level: float) -> None:
    """mAP and macro ROC-AUC per row with their cluster-bootstrap intervals (hatched: baseline)."""
    fig, ax = _figure(max(5.0, 1.3 * len(rows) + 2), 4.0)
    x, width = np.arange(len(rows)), 0.38
    for offset, metric in zip((-width / 2, width / 2), RANKED):
        values = np.array([np.nan if r[metric] is None else r[metric] for r in rows])
        bounds = np.array([r[f"{metric}_ci"] or [np.nan, np.nan] for r in rows], dtype=float)
        err = np.nan_to_num(np.abs(bounds.T - values))
        for bar, row in zip(
            ax.bar(x + offset, np.nan_to_num(values), width, yerr=err, capsize=3, label=METRIC_LABELS[metric]), rows
        ):
            bar.set_hatch("//" if row["kind"] == "baseline" else "")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"mAP and macro ROC-AUC with {level:.0%} cluster-bootstrap CIs over videos")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    plots._save(fig, path)


def plot_per_label_ap(document: dict[str, Any], path: str | Path) -> None:
    """Per-label AP of every model/ensemble row (bars) and of the label-frequency baseline (ticks: its
    AP is each label's test prevalence); labels without a positive test image are left empty."""
    table, labels = document["per_label"], document["per_label"]["labels"]
    names = [r["name"] for r in document["rows"] if r["kind"] != "baseline"]
    fig, ax = _figure(max(6.0, 0.5 * len(labels) * max(1, len(names)) ** 0.5 + 3), 4.5)
    x, width = np.arange(len(labels)), 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [np.nan if table["ap"][name][c] is None else table["ap"][name][c] for c in labels]
        ax.bar(x - 0.4 + (i + 0.5) * width, values, width, label=name)
    baseline = [np.nan if table["ap"][BASELINE][c] is None else table["ap"][BASELINE][c] for c in labels]
    ax.hlines(baseline, x - 0.45, x + 0.45, colors="black", linewidth=2, label="label-frequency baseline")
    ax.set_xticks(x, [f"{c} (n={table['support'][c]})" for c in labels], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.set_title("Average precision per label (test support in brackets)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    plots._save(fig, path)


def plot_label_counts(truth: np.ndarray, hot: np.ndarray, class_names: list[str], title: str, path: str | Path) -> None:
    """Per label: TP, FN, FP, TN counts of the thresholded decisions (pooled over seeds), shaded by
    their share of the label's images (the multi-label stand-in for a confusion matrix)."""
    hot = _bool_matrix(hot, "decisions")
    truth = np.broadcast_to(_bool_matrix(truth, "true multi-hot"), hot.shape).reshape(-1, len(class_names))
    hot = hot.reshape(-1, len(class_names))
    counts = np.stack([(truth & hot).sum(0), (truth & ~hot).sum(0), (~truth & hot).sum(0), (~truth & ~hot).sum(0)], 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure(6.0, min(14.0, 0.4 * len(class_names) + 2))
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, label="share of the label's images")
    ax.set_xticks(range(4), ["TP", "FN", "FP", "TN"])
    ax.set_yticks(range(len(class_names)), class_names)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    plots._save(fig, path)


def _write_plots(document, models, truth, history_paths, paths: dict[str, Any]) -> None:
    """``metrics_plot``, ``ap_plot``, ``curves_plot`` and per plain model ``confusion_plots`` (label
    counts) and ``reliability_plots`` (every (image, label) probability); None skips a plot."""
    if paths.get("metrics_plot"):
        plot_ranked_bars(document["rows"], paths["metrics_plot"], level=document["ci_level"])
    if paths.get("ap_plot"):
        plot_per_label_ap(document, paths["ap_plot"])
    ece = {r["name"]: r["ece"] for r in document["rows"]}
    for key in ("confusion_plots", "reliability_plots"):
        if paths.get(key) is None:
            continue
        if len(paths[key]) != len(models):
            raise UserError(f"compare_models: {len(paths[key])} {key} paths for {len(models)} models")
        for model, path in zip(models, paths[key]):
            if key == "confusion_plots":
                title = f"{model['name']}: decisions per label"
                plot_label_counts(truth, model["hot"], document["class_names"], title, path)
            else:
                table = clusterstats.reliability_bins(
                    *_binary_events(model["probs"], np.broadcast_to(truth, model["probs"].shape))
                )
                title = f"{model['name']}: P(label) reliability, every image x label (ECE {ece[model['name']]:.3f})"
                plots.plot_reliability(table, title, path)
    if paths.get("curves_plot"):
        if len(history_paths) != len(models):
            raise UserError(f"compare_models: {len(history_paths)} history files for {len(models)} models")
        plots.plot_training_curves(
            {m["name"]: plots.read_history(p) for m, p in zip(models, history_paths)}, paths["curves_plot"]
        )


# --------------------------------------------------------------------------- entry point


def compare_multilabel(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], history_paths: Sequence[str],
    split_report_path: str, label_map_path: str, *, seed: int, bootstrap_samples: int, alpha: float,
    permutations: int = 2000, ensemble: bool = True, synthetic: bool = False, narration_labels: bool = True,
    tta_metrics_paths: Sequence[str] = (), tta_predictions_paths: Sequence[str] = (),
    json_path: str | None = None, csv_path: str | None = None, md_path: str | None = None,
    html_path: str | None = None, metrics_plot: str | None = None, curves_plot: str | None = None,
    confusion_plots: Sequence[str] | None = None, reliability_plots: Sequence[str] | None = None,
    ap_plot: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """quiltflow.compare.multiclass.compare_models for a multi-label run (same arguments, files matched by
    position), plus ``ap_plot``: the per-label AP figure. Returns the document (``json_path``)."""
    if not 0 < alpha < 1:
        raise UserError(f"params alpha: must be in (0, 1), got {alpha}")
    class_names = read_label_map(label_map_path)
    prevalence, split_ratio = _train_prevalence(split_report_path, class_names)
    models, test_set, truth = _load_models(
        [*metrics_paths, *tta_metrics_paths], [*predictions_paths, *tta_predictions_paths], class_names
    )
    _mark_tta(models, len(metrics_paths), tta_metrics_paths)
    document = build_multilabel_comparison(
        models, test_set, truth, class_names, prevalence, seed=seed, bootstrap_samples=bootstrap_samples,
        permutations=permutations, alpha=alpha, ensemble=ensemble, synthetic=synthetic, split_ratio=split_ratio,
        narration_labels=narration_labels,
    )  # fmt: skip
    write_tables(document, json_path, csv_path, md_path, render=render_markdown, csv_writer=write_csv)
    paths = {"metrics_plot": metrics_plot, "ap_plot": ap_plot, "curves_plot": curves_plot,
             "confusion_plots": confusion_plots, "reliability_plots": reliability_plots}  # fmt: skip
    _write_plots(document, [m for m in models if m["kind"] == "model"], truth, history_paths, paths)
    if html_path:  # last: it embeds the summary plots
        captions = ((metrics_plot, METRICS_CAPTION), (ap_plot, AP_CAPTION), (curves_plot, CURVES_CAPTION))
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_path).write_text(_html(document, [(p, c) for p, c in captions if p]), encoding="utf-8")
    return document
