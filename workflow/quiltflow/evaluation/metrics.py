"""Test-set metrics from a saved predictions table (multiclass; multi-label in ``multilabel_metrics``).

The table's format is ``quiltflow.records.predictions``, the document's ``records.metrics_document``.
Everything here is recomputable from ``results/predictions/{model}.parquet`` alone, so this module
never imports TensorFlow (the comparison stage relies on that).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from quiltflow.core.errors import UserError
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, TASKS
from quiltflow.evaluation.multilabel_metrics import multilabel_metrics
from quiltflow.records.predictions import MULTI_HOT_COLUMNS, PREDICTION_COLUMNS, multi_hot_matrix, probability_matrix

# Softmax outputs stored as float32 sum to 1 within ~1e-6; anything further off is not a distribution.
_PROB_SUM_TOLERANCE = 1e-3


def _check_labels(
    predictions: pd.DataFrame, num_classes: int, source: str, columns: Sequence[str] = PREDICTION_COLUMNS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate rows, columns, label indices and probability width; return (y_true, y_pred, probabilities)."""
    if len(predictions) == 0:
        raise UserError(f"{source}: no predictions (empty test set?)")
    missing = [c for c in columns if c not in predictions.columns]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}")
    y_true = predictions["true_label"].to_numpy(np.int64)
    y_pred = predictions["pred_label"].to_numpy(np.int64)
    for name, values in (("true_label", y_true), ("pred_label", y_pred)):
        bad = np.flatnonzero((values < 0) | (values >= num_classes))
        if bad.size:
            row = int(bad[0])
            raise UserError(
                f"{source}: row {row} (image_id {predictions['image_id'].iloc[row]}) has "
                f"{name}={values[row]}, outside 0..{num_classes - 1}"
            )
    probs = probability_matrix(predictions, source=source)
    if probs.shape[1] != num_classes:
        raise UserError(f"{source}: probabilities have {probs.shape[1]} entries, label map has {num_classes} classes")
    return y_true, y_pred, probs


def _check_predictions(
    predictions: pd.DataFrame, num_classes: int, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate labels/probabilities; return (y_true, y_pred, probabilities renormalised in float64)."""
    y_true, y_pred, probs = _check_labels(predictions, num_classes, source)
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(sums) | (np.abs(sums - 1.0) > _PROB_SUM_TOLERANCE) | (probs.min(axis=1) < 0))
    if bad.size:
        row = int(bad[0])
        raise UserError(
            f"{source}: row {row} (image_id {predictions['image_id'].iloc[row]}) probabilities "
            f"are not a distribution (sum {sums[row]:.4g})"
        )
    # float32 rounding leaves sums ~1e-7 off; sklearn's log_loss warns unless they are exact in float64.
    return y_true, y_pred, probs / sums[:, None]


def _check_multilabel(predictions: pd.DataFrame, num_classes: int, source: str) -> tuple[np.ndarray, ...]:
    """Validate a multi-label table; return (true multi-hot, probabilities, predicted multi-hot).

    Probabilities are independent per label (sigmoid): each must be in [0, 1], rows need not sum to 1.
    """
    _, _, probs = _check_labels(predictions, num_classes, source, PREDICTION_COLUMNS + MULTI_HOT_COLUMNS)
    bad = np.flatnonzero((~np.isfinite(probs) | (probs < 0) | (probs > 1)).any(axis=1))
    if bad.size:
        row = int(bad[0])
        raise UserError(
            f"{source}: row {row} (image_id {predictions['image_id'].iloc[row]}) probabilities "
            f"are not all in [0, 1]: {probs[row].tolist()}"
        )
    hot = [multi_hot_matrix(predictions, name, source=source) for name in MULTI_HOT_COLUMNS]
    for name, matrix in zip(MULTI_HOT_COLUMNS, hot):
        if matrix.shape[1] != num_classes:
            raise UserError(f"{source}: {name} has {matrix.shape[1]} entries, label map has {num_classes} classes")
    return hot[0], probs, hot[1]


def compute_metrics(
    predictions: pd.DataFrame, class_names: Sequence[str], *, top_k: int, task: str = MULTICLASS
) -> dict[str, Any]:
    """All test metrics of one model, from its predictions table (scikit-learn throughout).

    Per-class values and the confusion matrix use every class of the label map, in its order
    (rows = true, columns = predicted). Macro averages follow scikit-learn's default: the mean over
    classes present in the true or predicted labels (a class absent from both says nothing).
    ``top_k_accuracy`` is ``None`` unless ``top_k < number of classes``.
    ``task="multilabel"``: the multi-label block of ``quiltflow.models.thresholds.multilabel_metrics`` from
    the ``true_multi_hot``/``probabilities``/``pred_multi_hot`` columns (``top_k`` unused).
    """
    class_names = [str(c) for c in class_names]
    k_classes = len(class_names)
    if task not in TASKS:
        raise UserError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if k_classes < 2:
        raise UserError(f"label map: need at least 2 classes, got {k_classes}")
    if int(top_k) < 1:
        raise UserError(f"params top_k: must be >= 1, got {top_k}")
    if task == MULTILABEL:
        return multilabel_metrics(*_check_multilabel(predictions, k_classes, "predictions"), class_names)
    return _multiclass_metrics(predictions, class_names, top_k)


def _multiclass_metrics(predictions: pd.DataFrame, class_names: list[str], top_k: int) -> dict[str, Any]:
    """The multiclass ``metrics`` block (see compute_metrics)."""
    k_classes = len(class_names)
    y_true, y_pred, probs = _check_predictions(predictions, k_classes, "predictions")
    labels = list(range(k_classes))

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    averages: dict[str, float] = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        averages.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})

    top_k_accuracy = None
    if top_k < k_classes:
        # Binary scores are the positive-class probability in scikit-learn's convention.
        scores = probs[:, 1] if k_classes == 2 else probs
        top_k_accuracy = float(top_k_accuracy_score(y_true, scores, k=top_k, labels=labels))

    return {
        "n_test": int(len(y_true)),
        "n_classes": k_classes,
        "class_names": class_names,
        "loss": float(log_loss(y_true, probs, labels=labels)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Mean recall over classes present in y_true (scikit-learn's definition).
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "top_k": int(top_k),
        "top_k_accuracy": top_k_accuracy,
        **{key: float(value) for key, value in averages.items()},
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
    }


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" is expected when a model predicts a rare class.
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))
