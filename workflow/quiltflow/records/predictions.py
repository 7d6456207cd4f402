"""The predictions Parquet (``results/predictions/{model}.parquet``): its schema, writer and readers.

One row per test image (per seed with several runs): ``image_id``, ``group``, labels and one
probability per class; multi-label runs add multi-hot truth and decisions. No TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quiltflow.core.errors import UserError

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


# Bag models (unit video) only (issue 27): the frames each video's prediction saw.
BAG_COLUMNS = ("n_frames",)


_MULTI_HOT_FIELDS = [pa.field(name, pa.list_(pa.int8())) for name in MULTI_HOT_COLUMNS]


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
    bag_columns = [name for name in BAG_COLUMNS if name in predictions.columns]
    for field in _MULTI_HOT_FIELDS + _RUN_FIELDS + [pa.field(name, pa.int32()) for name in bag_columns]:
        if field.name in run_columns + hot_columns + bag_columns:
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
            **{name: pa.array(predictions[name].to_numpy(np.int32), pa.int32()) for name in bag_columns},
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
