"""Test-set metrics from a saved predictions table, and the versioned metrics JSON document.

Everything here is recomputable from ``results/predictions/{model}.parquet`` alone, so this module
never imports TensorFlow (the comparison stage relies on that).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from quiltflow.errors import UserError
from quiltflow.jsonio import read_json
from quiltflow.multilabel import multilabel_metrics
from quiltflow.tasks import MULTICLASS, MULTILABEL, TASKS

METRICS_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "metrics.schema.json"

PREDICTION_COLUMNS = ("image_id", "group", "true_label", "pred_label", "probabilities")
# The run of each prediction (cross-validation fold, seed); written whenever present.
RUN_COLUMNS = ("fold", "seed")
# Multi-label runs only (issue 16): the true multi-hot and the thresholded prediction, label-map order.
MULTI_HOT_COLUMNS = ("true_multi_hot", "pred_multi_hot")
PREDICTIONS_ARROW_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("group", pa.string()),
        ("true_label", pa.int32()),
        ("pred_label", pa.int32()),
        ("probabilities", pa.list_(pa.float32())),
    ]
)
_RUN_FIELDS = [pa.field(name, pa.int32()) for name in RUN_COLUMNS]
_MULTI_HOT_FIELDS = [pa.field(name, pa.list_(pa.int8())) for name in MULTI_HOT_COLUMNS]
# Softmax outputs stored as float32 sum to 1 within ~1e-6; anything further off is not a distribution.
_PROB_SUM_TOLERANCE = 1e-3


def _list_array(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A [n, width] matrix as an Arrow ``list<value_type>`` column."""
    flat = pa.array(matrix.ravel(), value_type)
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]).cast(pa.list_(value_type))


def probability_column(class_name: str) -> str:
    """The column of one label's probability (multi-label predictions, prediction on new images)."""
    return f"prob_{class_name}"


def write_predictions(predictions: pd.DataFrame, path: str | Path, class_names: Sequence[str] = ()) -> None:
    """Write a predictions table with the exact column types of docs/interfaces.md.

    Multi-label tables also carry ``true_multi_hot`` and ``pred_multi_hot`` (list<int8>, one entry
    per label), written after ``probabilities`` whenever present, and, given ``class_names``, one
    float32 column per label (``probability_column``) at the end: the same values as
    ``probabilities``, for readers that want a label by name.
    """
    probs = probability_matrix(predictions, source=str(path))
    run_columns = [name for name in RUN_COLUMNS if name in predictions.columns]
    hot_columns = [name for name in MULTI_HOT_COLUMNS if name in predictions.columns]
    hot = {name: multi_hot_matrix(predictions, name, source=str(path)) for name in hot_columns}
    for name, matrix in hot.items():
        if matrix.shape[1] != probs.shape[1]:
            raise UserError(f"{path}: {name} has {matrix.shape[1]} entries, probabilities {probs.shape[1]}")
    schema = PREDICTIONS_ARROW_SCHEMA
    for field in _MULTI_HOT_FIELDS + _RUN_FIELDS:
        if field.name in run_columns + hot_columns:
            schema = schema.append(field)
    per_label = {}
    if hot_columns and class_names:
        if len(class_names) != probs.shape[1]:
            raise UserError(f"{path}: {len(class_names)} class names for {probs.shape[1]} probabilities")
        per_label = {probability_column(c): pa.array(probs[:, k].astype(np.float32)) for k, c in enumerate(class_names)}
        for name in per_label:
            schema = schema.append(pa.field(name, pa.float32()))
    table = pa.table(
        {
            "image_id": pa.array(predictions["image_id"].astype(str).tolist(), pa.string()),
            "group": pa.array(predictions["group"].astype(str).tolist(), pa.string()),
            "true_label": pa.array(predictions["true_label"].to_numpy(np.int32), pa.int32()),
            "pred_label": pa.array(predictions["pred_label"].to_numpy(np.int32), pa.int32()),
            "probabilities": _list_array(probs.astype(np.float32), pa.float32()),
            **{name: _list_array(matrix, pa.int8()) for name, matrix in hot.items()},
            **{name: pa.array(predictions[name].to_numpy(np.int32), pa.int32()) for name in run_columns},
            **per_label,
        },
        schema=schema,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions Parquet file, checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    frame = pd.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"predictions file {path}: missing column(s) {', '.join(missing)}")
    return frame


def probability_matrix(predictions: pd.DataFrame, *, source: str = "predictions") -> np.ndarray:
    """The ``probabilities`` column as a float64 [n, classes] matrix (rows must have equal length)."""
    rows = predictions["probabilities"].to_list()
    if not rows:
        return np.zeros((0, 0))
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise UserError(f"{source}: probabilities rows have different lengths {sorted(lengths)}")
    return np.asarray(np.stack([np.asarray(r, dtype=np.float64) for r in rows]), dtype=np.float64)


def multi_hot_matrix(predictions: pd.DataFrame, column: str, *, source: str = "predictions") -> np.ndarray:
    """A multi-hot column (``true_multi_hot``/``pred_multi_hot``) as an int8 [n, labels] 0/1 matrix."""
    rows = predictions[column].to_list()
    if not rows:
        return np.zeros((0, 0), dtype=np.int8)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise UserError(f"{source}: {column} rows have different lengths {sorted(lengths)}")
    matrix = np.stack([np.asarray(r, dtype=np.int64) for r in rows])
    bad = np.flatnonzero(((matrix != 0) & (matrix != 1)).any(axis=1))
    if bad.size:
        row = int(bad[0])
        raise UserError(
            f"{source}: row {row} (image_id {predictions['image_id'].iloc[row]}) {column} is not 0/1: "
            f"{matrix[row].tolist()}"
        )
    return matrix.astype(np.int8)


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
    ``task="multilabel"``: the multi-label block of ``quiltflow.multilabel.multilabel_metrics`` from
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


def build_metrics_document(
    *,
    model: str,
    architecture: str,
    weights: str,
    dataset_sha256: str,
    train_seconds: float | None,
    eval_seconds: float,
    metrics: dict[str, Any],
    test_manifest: str | None = None,
    n_manifest: int | None = None,
    skipped_by_reason: dict[str, int] | None = None,
    device: str | None = None,
    task: str = MULTICLASS,
) -> dict[str, Any]:
    """The versioned metrics JSON of one model (schema: workflow/schemas/metrics.schema.json).

    ``n_manifest`` and ``skipped_by_reason`` say how the test manifest's rows reconcile with
    ``metrics.n_test`` (images that could not be sharded are counted, not silently dropped).
    ``task`` (multiclass | multilabel) says which ``metrics`` block ``compute_metrics`` made.
    """
    document = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "task": task,
        "model": model,
        "architecture": architecture,
        "weights": weights,
        "dataset": {
            "test_manifest": test_manifest,
            "sha256": dataset_sha256,
            "n_manifest": int(n_manifest) if n_manifest is not None else int(metrics["n_test"]),
            "skipped_by_reason": {str(k): int(v) for k, v in (skipped_by_reason or {}).items()},
        },
        "timing": {
            "train_seconds": None if train_seconds is None else float(train_seconds),
            "eval_seconds": float(eval_seconds),
            "device": device,
        },
        "metrics": metrics,
    }
    validate_metrics_document(document)
    return document


def load_metrics_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def validate_metrics_document(document: dict[str, Any], *, source: str = "metrics document") -> None:
    """Check a metrics document against the JSON Schema and its internal counts."""
    import jsonschema  # only here: keeps `import quiltflow.metrics` light for the pure metric functions

    validator = jsonschema.Draft202012Validator(load_metrics_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: len(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise UserError(f"{source}: key {where}: {err.message}")
    metrics = document["metrics"]
    k = metrics["n_classes"]
    if document_task(document) == MULTILABEL:
        if metrics["class_names"] != list(metrics["per_class"]) or len(metrics["class_names"]) != k:
            raise UserError(f"{source}: class_names/per_class do not match n_classes={k}")
    else:
        matrix = metrics["confusion_matrix"]
        if len(metrics["class_names"]) != k or len(matrix) != k or any(len(row) != k for row in matrix):
            raise UserError(f"{source}: class_names/confusion_matrix do not match n_classes={k}")
        if sum(map(sum, matrix)) != metrics["n_test"]:
            raise UserError(f"{source}: confusion matrix total != n_test={metrics['n_test']}")
    dataset = document["dataset"]
    skipped = sum(dataset["skipped_by_reason"].values())
    if dataset["n_manifest"] != metrics["n_test"] + skipped:
        raise UserError(
            f"{source}: n_manifest={dataset['n_manifest']} != n_test={metrics['n_test']} + skipped={skipped}"
        )


def document_task(document: dict[str, Any]) -> str:
    """The task of a metrics document (one written before multi-label has no ``task``: multiclass)."""
    return document.get("task", MULTICLASS)


def load_metrics_document(path: str | Path) -> dict[str, Any]:
    """Read and validate a metrics JSON (refuses other schema versions with a clear message)."""
    document = read_json(path, "metrics file")
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != METRICS_SCHEMA_VERSION:
        raise UserError(
            f"metrics file {path}: schema_version {version!r}, expected {METRICS_SCHEMA_VERSION} "
            "(re-run evaluate_model)"
        )
    validate_metrics_document(document, source=f"metrics file {path}")
    return document
