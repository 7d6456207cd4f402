"""The filtered table and split manifests on disk: their Arrow schema and a stable Parquet I/O.

``filter_metadata`` writes the filtered table, ``split_manifests`` reads it and writes one
manifest per split (the same columns plus ``label_index``); columns in ``docs/interfaces.md``.
Equal input gives equal bytes: no index, no pandas metadata, fixed compression.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import write_json

FILTERED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.string()),
        # The unit of the split: the video, or videos joined by near-duplicates (quiltflow.data.units).
        ("group", pa.string()),
        ("pathologies", pa.list_(pa.string())),
        # The image's targets: [label] (label_policy primary) or every surviving label (multilabel).
        ("labels", pa.list_(pa.string())),
        ("subset", pa.string()),
        ("source_split", pa.string()),
        ("magnification", pa.float64()),
        ("n_captions", pa.int32()),
        ("video", pa.string()),  # the image's own video (source group), before near-duplicate joining
    ]
)
MANIFEST_SCHEMA = FILTERED_SCHEMA.append(pa.field("label_index", pa.int32())).append(
    pa.field("label_indices", pa.list_(pa.int32()))  # ``labels`` as label-map indices
)
# label_index of a frame without a label (the unlabeled pool's manifests: quiltflow.data.unlabeled);
# its label_indices are empty. Shards and indexes accept it; no labelled bucket holds one.
UNLABELED_INDEX = -1
# results/splits/folds.parquet: which run tests each image (quiltflow.data.splits.fold_assignment).
FOLDS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("group", pa.string()),
        ("label", pa.string()),
        ("fold", pa.int32()),
        ("bucket", pa.string()),
    ]
)


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas keeping list columns as Arrow lists (cheap, and round-trips exactly)."""
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def write_parquet_stable(df: pd.DataFrame, path: str | Path, schema: pa.Schema) -> None:
    """Write ``df`` with ``schema``: no index, no pandas metadata, so equal input = equal bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)
    # Dictionary pages only where values repeat; unique ids would just pay for a failed attempt.
    low_card = [c for c in ("label", "group", "video", "subset", "source_split") if c in schema.names]
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=low_card)


def write_filtered(table: pd.DataFrame, report: dict, table_path: str | Path, report_path: str | Path) -> None:
    """Write the filtered table (Parquet) and its report (JSON)."""
    write_parquet_stable(table, table_path, FILTERED_SCHEMA)
    write_json(report, report_path, sort_keys=True)  # stable bytes for stable content


def read_filtered(path: str | Path) -> pd.DataFrame:
    """Read a filtered table (or split manifest) written by this package."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: filtered table not found")
    return arrow_to_pandas(pq.read_table(path))
