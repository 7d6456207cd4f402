"""Multi-label targets and decision thresholds (issue 16); numpy and scikit-learn only.

Under ``filters.label_policy: multilabel`` each image's target is the multi-hot vector of its
pathology list; the model gives an independent (sigmoid) probability per label, a label is
predicted when its probability reaches that label's threshold, and the thresholds are chosen on
the validation split (``f1_optimal_thresholds``) and applied unchanged at test time.
No TensorFlow here; the test metrics are ``quiltflow.evaluation.multilabel_metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from quiltflow.core.errors import UserError

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


def as_binary_matrix(values: Any, name: str) -> np.ndarray:
    """A 2-D 0/1 matrix as int8, or a one-line UserError naming the first bad row."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise UserError(f"{name}: expected a 2-D [images, labels] matrix, got shape {array.shape}")
    bad = np.argwhere((array != 0) & (array != 1))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise UserError(f"{name}: row {row} label {col} is {array[row, col].item()!r}, expected 0 or 1")
    return array.astype(np.int8)


def as_probability_matrix(values: Any, name: str) -> np.ndarray:
    """A 2-D matrix of finite probabilities in [0, 1] as float64 (rows need not sum to 1)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise UserError(f"{name}: expected a 2-D [images, labels] matrix, got shape {array.shape}")
    bad = np.argwhere(~np.isfinite(array) | (array < 0) | (array > 1))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise UserError(f"{name}: row {row} label {col} is {array[row, col].item()!r}, not a probability in [0, 1]")
    return array


def check_same_shape(*named: tuple[str, np.ndarray]) -> None:
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
    y_true = as_binary_matrix(y_true, "thresholds y_true")
    probs = as_probability_matrix(probs, "thresholds probabilities")
    check_same_shape(("y_true", y_true), ("probabilities", probs))
    return np.array([_best_threshold(y_true[:, j], probs[:, j]) for j in range(y_true.shape[1])], dtype=np.float64)


def apply_thresholds(probs: Any, thresholds: Any) -> np.ndarray:
    """int8 [n, labels]: 1 where a label's probability is >= that label's threshold."""
    probs = as_probability_matrix(probs, "probabilities")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (probs.shape[1],):
        raise UserError(f"thresholds: {thresholds.shape} values for {probs.shape[1]} labels")
    return (probs >= thresholds[None, :]).astype(np.int8)


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
