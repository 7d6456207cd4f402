"""The attention Parquet of a bag model (``results/attention/{model}.parquet``): writer and reader.

One row per test frame: ``image_id``, ``group`` (its video), ``fold``, ``seed`` and ``attention``,
the frame's weight in its video's prediction; the weights of one video in one run sum to 1. No
TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quiltflow.core.errors import UserError

ATTENTION_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("group", pa.string()),
        ("fold", pa.int32()),
        ("seed", pa.int32()),
        ("attention", pa.float32()),
    ]
)
SUM_TOLERANCE = 1e-3  # float32 weights of a long video


def check_attention(table: pd.DataFrame, source: str = "attention") -> None:
    """Each (video, fold, seed)'s weights are in [0, 1] and sum to 1."""
    missing = [name for name in ATTENTION_SCHEMA.names if name not in table.columns]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}")
    sums = table.groupby(["group", "fold", "seed"])["attention"].sum()
    bad = sums[(sums - 1.0).abs() > SUM_TOLERANCE]
    if len(bad) or ((table["attention"] < 0) | (table["attention"] > 1 + SUM_TOLERANCE)).any():
        where = f"video {bad.index[0][0]} sums to {bad.iloc[0]:.4f}" if len(bad) else "a weight is outside [0, 1]"
        raise UserError(f"{source}: attention weights must sum to 1 per video; {where}")


def write_attention(table: pd.DataFrame, path: str | Path) -> None:
    """Write the attention table with the column types above (checked first)."""
    check_attention(table, str(path))
    columns = {
        "image_id": pa.array(table["image_id"].astype(str).tolist(), pa.string()),
        "group": pa.array(table["group"].astype(str).tolist(), pa.string()),
        "fold": pa.array(table["fold"].to_numpy(np.int32), pa.int32()),
        "seed": pa.array(table["seed"].to_numpy(np.int32), pa.int32()),
        "attention": pa.array(table["attention"].to_numpy(np.float32), pa.float32()),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=ATTENTION_SCHEMA), path)


def read_attention(path: str | Path) -> pd.DataFrame:
    """Read and check an attention table."""
    if not Path(path).is_file():
        raise UserError(f"attention file not found: {path}")
    table = pd.read_parquet(path)
    check_attention(table, str(path))
    return table


def pool_attention(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Concatenate the runs' attention tables (each checked) into ``out``."""
    table = pd.concat([read_attention(path) for path in paths], ignore_index=True)
    write_attention(table, out)
    return table
