"""Multi-label test metrics (per label and averaged) from probabilities, decisions and truth.

numpy and scikit-learn only; the thresholds that make the decisions are ``quiltflow.models.thresholds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from quiltflow.core.errors import UserError
from quiltflow.models.thresholds import as_binary_matrix, as_probability_matrix, check_same_shape


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
    y_true = as_binary_matrix(y_true, "true_multi_hot")
    y_pred = as_binary_matrix(y_pred, "pred_multi_hot")
    probs = as_probability_matrix(probs, "probabilities")
    check_same_shape(("true_multi_hot", y_true), ("probabilities", probs), ("pred_multi_hot", y_pred))
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
