"""Multi-label targets, decision thresholds and test metrics (issue 16); numpy and scikit-learn only.

Under ``filters.label_policy: multilabel`` each image's target is the multi-hot vector of its
pathology list; the model gives an independent (sigmoid) probability per label, a label is
predicted when its probability reaches that label's threshold, and the thresholds are chosen on
the validation split (``f1_optimal_thresholds``) and applied unchanged at test time.
No TensorFlow here: the comparison stage recomputes everything from the predictions Parquet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from quiltflow.errors import UserError

# Threshold of a label without a positive validation row: F1 is 0 at every threshold, nothing to learn.
NO_POSITIVE_THRESHOLD = 0.5


def multi_hot(index_lists: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """int8 [n, num_classes]: row i has a 1 at every label index of ``index_lists[i]`` (duplicates are fine)."""
    out = np.zeros((len(index_lists), int(num_classes)), dtype=np.int8)
    for row, indices in enumerate(index_lists):
        indices = np.asarray(list(indices), dtype=np.int64)
        bad = indices[(indices < 0) | (indices >= num_classes)]
        if bad.size:
            raise UserError(f"multi-hot row {row}: label index {int(bad[0])} outside 0..{int(num_classes) - 1}")
        out[row, indices] = 1
    return out


def _binary_matrix(values: Any, name: str) -> np.ndarray:
    """A 2-D 0/1 matrix as int8, or a one-line UserError naming the first bad row."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise UserError(f"{name}: expected a 2-D [images, labels] matrix, got shape {array.shape}")
    bad = np.argwhere((array != 0) & (array != 1))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise UserError(f"{name}: row {row} label {col} is {array[row, col].item()!r}, expected 0 or 1")
    return array.astype(np.int8)


def _probability_matrix(values: Any, name: str) -> np.ndarray:
    """A 2-D matrix of finite probabilities in [0, 1] as float64 (rows need not sum to 1)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise UserError(f"{name}: expected a 2-D [images, labels] matrix, got shape {array.shape}")
    bad = np.argwhere(~np.isfinite(array) | (array < 0) | (array > 1))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise UserError(f"{name}: row {row} label {col} is {array[row, col].item()!r}, not a probability in [0, 1]")
    return array


def _same_shape(*named: tuple[str, np.ndarray]) -> None:
    shapes = {name: array.shape for name, array in named}
    if len(set(shapes.values())) != 1:
        raise UserError("shapes differ: " + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))


def _best_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """F1-optimal threshold of one label, exact over every distinct score (see f1_optimal_thresholds)."""
    positives = int(y.sum())
    if positives == 0:
        return NO_POSITIVE_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_y = scores[order], y[order].astype(np.int64)
    # Last position of each run of equal scores: predicting "score >= that value" flags rows 0..end.
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    true_pos = np.cumsum(sorted_y)[ends]
    flagged = ends + 1
    f1 = 2.0 * true_pos / (flagged + positives)
    best = int(np.flatnonzero(f1 == f1.max())[-1])  # ties: the lowest threshold (more recall, same F1)
    upper = float(sorted_scores[ends[best]])
    lower = float(sorted_scores[ends[best + 1]]) if best + 1 < len(ends) else 0.0
    middle = (upper + lower) / 2.0
    # Adjacent floats can round the midpoint down onto ``lower``; the chosen score itself is then exact.
    return middle if lower < middle <= upper else upper


def f1_optimal_thresholds(y_true: Any, probs: Any) -> np.ndarray:
    """Per label, the decision threshold maximising F1 on these (validation) rows; float64 [labels].

    Exact, not a grid: a label's scores are sorted once (O(n log n)) and F1 is evaluated at every
    distinct score ``s`` as the rule ``prob >= s`` (cumulative true positives). Of the best score
    the threshold returned is the midpoint between it and the next lower distinct score (0.0 below
    the lowest), so the decisions on these rows are exactly those of the best score while a tiny
    shift of a probability (float32 storage, another device) does not flip them. Ties in F1 go to
    the lowest threshold (more recall at equal F1). A label without a positive row has F1 0 at every
    threshold, nothing to learn: it gets ``NO_POSITIVE_THRESHOLD`` (0.5).
    """
    y_true = _binary_matrix(y_true, "thresholds y_true")
    probs = _probability_matrix(probs, "thresholds probabilities")
    _same_shape(("y_true", y_true), ("probabilities", probs))
    return np.array([_best_threshold(y_true[:, j], probs[:, j]) for j in range(y_true.shape[1])], dtype=np.float64)


def apply_thresholds(probs: Any, thresholds: Any) -> np.ndarray:
    """int8 [n, labels]: 1 where a label's probability is >= that label's threshold."""
    probs = _probability_matrix(probs, "probabilities")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (probs.shape[1],):
        raise UserError(f"thresholds: {thresholds.shape} values for {probs.shape[1]} labels")
    return (probs >= thresholds[None, :]).astype(np.int8)


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _ranking_scores(y: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """(average precision, ROC AUC) of one label; None where the label's test column leaves it undefined."""
    positives = int(y.sum())
    ap = float(average_precision_score(y, scores)) if positives > 0 else None
    auc = float(roc_auc_score(y, scores)) if 0 < positives < len(y) else None
    return ap, auc


def _check_inputs(y_true: Any, probs: Any, y_pred: Any, class_names: Sequence[str]) -> tuple[np.ndarray, ...]:
    y_true = _binary_matrix(y_true, "true_multi_hot")
    y_pred = _binary_matrix(y_pred, "pred_multi_hot")
    probs = _probability_matrix(probs, "probabilities")
    _same_shape(("true_multi_hot", y_true), ("probabilities", probs), ("pred_multi_hot", y_pred))
    if y_true.shape[0] == 0:
        raise UserError("multi-label metrics: no predictions (empty test set?)")
    if y_true.shape[1] != len(class_names):
        raise UserError(f"multi-label metrics: {y_true.shape[1]} labels, label map has {len(class_names)} classes")
    return y_true, probs, y_pred


def multilabel_metrics(y_true: Any, probs: Any, y_pred: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """The multi-label ``metrics`` block of results/metrics/{model}.json (scikit-learn throughout).

    ``y_true``/``y_pred`` are 0/1 [n, labels] (``y_pred`` = probabilities >= the run's thresholds),
    ``probs`` the independent per-label probabilities. Per label: ``ap`` (average precision) is
    None without a positive test image, ``auc`` (ROC) None without both a positive and a negative;
    ``map_macro``/``auc_macro`` are the means over the labels where they are defined (None if none
    is). ``f1_macro`` is the mean F1 over labels present in the true or predicted sets (as the
    multiclass macro averages: a label absent from both says nothing; 0.0 if no label is present).
    ``subset_accuracy`` is the exact-match ratio, ``top1_in_labels`` the share of images whose
    highest-probability label (first on ties, = ``pred_label``) is one of its true labels,
    ``label_cardinality`` the mean number of true labels per image.
    """
    class_names = [str(c) for c in class_names]
    y_true, probs, y_pred = _check_inputs(y_true, probs, y_pred, class_names)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    ranking = [_ranking_scores(y_true[:, j], probs[:, j]) for j in range(len(class_names))]
    present = (y_true.sum(axis=0) > 0) | (y_pred.sum(axis=0) > 0)
    _, _, f1_micro, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    top1 = y_true[np.arange(len(y_true)), np.argmax(probs, axis=1)]
    return {
        "n_test": int(y_true.shape[0]),
        "n_classes": len(class_names),
        "class_names": class_names,
        "map_macro": _mean_defined([ap for ap, _ in ranking]),
        "auc_macro": _mean_defined([auc for _, auc in ranking]),
        "f1_micro": float(f1_micro),
        "f1_macro": float(np.mean(f1[present])) if present.any() else 0.0,
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "top1_in_labels": float(np.mean(top1)),
        "label_cardinality": float(y_true.sum(axis=1).mean()),
        "per_class": {
            name: {
                "ap": ranking[i][0],
                "auc": ranking[i][1],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
    }


def ordered_thresholds(thresholds: Any, class_names: Sequence[str], source: str) -> np.ndarray:
    """A run's ``train_info.json`` ``thresholds`` (``{class: float}``) as float64 [C] in label-map
    order; no mapping, a missing class or a non-finite value is a one-line UserError naming ``source``."""
    if not isinstance(thresholds, Mapping):
        raise UserError(f"{source}: no thresholds (a multi-label run records one per label)")
    missing = [c for c in class_names if c not in thresholds]
    if missing:
        raise UserError(
            f"{source}: no threshold for class {missing[0]!r} ({len(missing)} of {len(class_names)} missing)"
        )
    values = np.array([float(thresholds[c]) for c in class_names])
    if not np.isfinite(values).all():
        raise UserError(f"{source}: thresholds must be finite numbers")
    return values
