"""Shard geometry and the shard plan: how many shards a split gets and their names.

Standard library only at import: the Snakefile asks for :func:`shard_names` while it builds
the DAG (pyarrow is imported inside :func:`plan_shards`, which reads Parquet footers).
"""

from __future__ import annotations

import math


def shard_count(rows: int, images_per_shard: int) -> int:
    """Number of shards for a split: ``max(1, ceil(rows / images_per_shard))``
    (``images_per_shard`` >= 1, as ShardSettings guarantees)."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    return max(1, math.ceil(rows / images_per_shard))


def shard_bounds(rows: int, num_shards: int, index: int) -> tuple[int, int]:
    """Manifest rows ``[start, stop)`` of shard ``index``; ``ips = ceil(rows / num_shards)``.

    With ``num_shards`` from :func:`shard_count` no shard is empty (unless ``rows == 0``).
    """
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} out of range for {num_shards} shards")
    per_shard = math.ceil(rows / num_shards)
    return min(index * per_shard, rows), min((index + 1) * per_shard, rows)


def plan_shards(manifest_paths: dict[str, str], images_per_shard: int) -> dict:
    """Rows and shard count per split, read from the manifests' Parquet footers (no data read).

    The plan is the workflow's checkpoint: Snakemake reads it to know how many shard jobs to
    schedule, so only the per-split index jobs depend on a checkpoint (see README, "Shard count").
    """
    import pyarrow.parquet as pq

    splits = {}
    for split, path in sorted(manifest_paths.items()):
        rows = pq.read_metadata(path).num_rows
        splits[split] = {"rows": rows, "num_shards": shard_count(rows, images_per_shard)}
    return {"images_per_shard": images_per_shard, "splits": splits}


def shard_names(plan: dict, split: str, suffix: str = ".tfrecord") -> list[str]:
    """Deterministic shard file names of one split under results/tfrecords/{split}/."""
    total = plan["splits"][split]["num_shards"]
    return [f"{split}-{i:05d}-of-{total:05d}{suffix}" for i in range(total)]
