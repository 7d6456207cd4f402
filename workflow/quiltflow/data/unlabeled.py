"""Frames without a label for ``pretraining.<name>.pool: unlabeled`` (rule split_unlabeled).

Contrastive pretraining needs no label, so the frames the filters removed for their label only
(``quiltflow.data.metadata.LABEL_REASONS``: no label, a label outside the vocabulary, a class
excluded or too small) can join a pool; frames removed for image reasons (unsafe path, subset,
size, missing file) never reach here, and frames whose file cannot be decoded are left out.

The video is the unit. Each unlabeled frame gets the unit it would have had among the labelled
frames: its video, joined with other videos through near-duplicate clusters over labelled and
unlabeled frames together (``filters.near_duplicates: group``; ``drop`` instead leaves out an
unlabeled frame that repeats a labelled one or a smaller-id unlabeled one). Its bucket
(``quiltflow.core.cv``) then says which labelled videos its unit touches:

* ``unlabeled``: none; it may join every fold's pool;
* ``unlabeled-{bucket}``: videos of ``bucket`` only; it joins the pools of the folds that train on
  ``bucket`` (``quiltflow.dag.pretraining.pool_buckets``), never one that validates or tests on it;
* a unit touching several buckets is left out of every pool (``unit_spans_buckets``).

Every label-reason row of the filter report is accounted for once in the report, every unlabeled
frame once, and per fold the frames in the pool plus those left out for leakage add up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from quiltflow.core.cv import UNLABELED, buckets, unlabeled_bucket, unlabeled_buckets
from quiltflow.core.jsonio import read_json, write_json
from quiltflow.core.settings import FilterSettings
from quiltflow.dag.pretraining import UNLABELED_KEYS, pool_buckets
from quiltflow.data.image_hashes import ImageHashes
from quiltflow.data.neardup import HASH_UNREADABLE, cluster_hashes
from quiltflow.data.units import join_videos
from quiltflow.records.tables import MANIFEST_SCHEMA, UNLABELED_INDEX, write_parquet_stable

log = logging.getLogger("quiltflow.data.unlabeled")

# Why an unlabeled frame is in no pool: image reasons (every fold), and the unit rule.
UNREADABLE = "unreadable"
NEAR_DUPLICATE = "near_duplicate"
SPANS_BUCKETS = "unit_spans_buckets"
# results/splits/unlabeled_frames.parquet: every unlabeled frame, its unit and its bucket.
FRAMES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("video", pa.string()),
        ("unit", pa.string()),
        ("removed_by", pa.string()),  # the filter reason that took its label
        ("pool_bucket", pa.string()),  # null when it is in no pool
        ("excluded", pa.string()),  # why it is in no pool (null when it has a bucket)
        ("subset", pa.string()),
        ("n_captions", pa.int32()),
    ]
)


def labelled_frames(manifests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """image_id, video, bucket of every frame of the split manifests."""
    parts = [m[["image_id", "video"]].assign(bucket=name) for name, m in manifests.items()]
    return pd.concat(parts, ignore_index=True)


def _near_duplicates(kept: pd.DataFrame, candidates: pd.DataFrame, root: np.ndarray) -> np.ndarray:
    """``drop`` mode: candidates sharing a cluster with a labelled frame, or with an unlabeled
    frame of smaller image_id (the one that stays)."""
    kept_roots, cand_roots = root[: len(kept)], root[len(kept) :]
    order = np.argsort(candidates["image_id"].to_numpy(dtype=str), kind="stable")
    repeat = np.zeros(len(candidates), dtype=bool)
    repeat[order] = pd.Series(cand_roots[order]).duplicated().to_numpy()
    return np.isin(cand_roots, kept_roots) | repeat


def assign_pool_buckets(
    kept: pd.DataFrame, candidates: pd.DataFrame, root: np.ndarray | None, mode: str
) -> pd.DataFrame:
    """``candidates`` (image_id, video; an ``excluded`` column may say why some are in no pool)
    with their ``unit``, ``pool_bucket`` and ``excluded``.

    ``kept``: image_id, video, bucket of the labelled frames. ``root``: the near-duplicate
    cluster of every row of ``kept`` then ``candidates`` (None: near-duplicates off). ``mode``:
    filters.near_duplicates (``group`` joins videos into units, ``drop`` leaves repeats out).
    """
    out = candidates.copy()
    excluded = out["excluded"].to_numpy(dtype=object) if "excluded" in out else np.full(len(out), None, object)
    video = pd.concat([kept["video"], out["video"]], ignore_index=True).astype(str)
    if root is not None and mode == "group":
        unit = join_videos(video, root)[0].to_numpy(dtype=object)
    else:
        unit = video.to_numpy(dtype=object)
        if root is not None and mode == "drop":
            excluded = np.where((excluded == None) & _near_duplicates(kept, out, root), NEAR_DUPLICATE, excluded)  # noqa: E711
    touched = pd.Series(kept["bucket"].to_numpy(), index=unit[: len(kept)]).groupby(level=0).unique()
    bucket = np.full(len(out), None, dtype=object)
    for i, frame_unit in enumerate(unit[len(kept) :]):
        if excluded[i] is not None:
            continue
        found = sorted(touched.get(frame_unit, []))
        if len(found) > 1:  # the unlabeled frames link videos the split put apart
            excluded[i] = SPANS_BUCKETS
        else:
            bucket[i] = unlabeled_bucket(found[0]) if found else UNLABELED
    return out.assign(unit=unit[len(kept) :], pool_bucket=bucket, excluded=excluded)


def fold_facts(frames: pd.DataFrame, fold: int, folds: int) -> dict:
    """Unlabeled frames in fold ``fold``'s pool, and those the leakage rule leaves out (their unit
    touches a validation or test video of the fold, or spans buckets). Image reasons not counted."""
    in_pool = frames["pool_bucket"].isin(pool_buckets("unlabeled", fold, folds)).to_numpy()
    eligible = frames["excluded"].isna().to_numpy() | (frames["excluded"] == SPANS_BUCKETS).to_numpy()
    return dict(zip(UNLABELED_KEYS, (int(in_pool.sum()), int((eligible & ~in_pool).sum()))))


def _unreadable(candidates: pd.DataFrame, status: np.ndarray) -> pd.DataFrame:
    return candidates.assign(excluded=np.where(status == HASH_UNREADABLE, UNREADABLE, None).astype(object))


def split_unlabeled(
    candidates: pd.DataFrame,
    counts: dict,
    manifests: Mapping[str, pd.DataFrame],
    filters: FilterSettings,
    folds: int,
    image_hashes: ImageHashes | None = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """({unlabeled bucket: manifest}, every unlabeled frame, report) from
    ``quiltflow.data.metadata.label_removed_images`` (``candidates``, ``counts``) and the split
    manifests of the labelled buckets. Near-duplicates use ``image_hashes`` (rule hash_images)."""
    kept = labelled_frames(manifests)
    root = None
    if filters.near_duplicates != "off" and image_hashes is not None:
        names = [*kept["image_id"], *candidates["image_id"]]
        hashes, status = image_hashes.of(names)
        root = cluster_hashes(hashes, status, filters.near_duplicate_distance).root
        candidates = _unreadable(candidates, status[len(kept) :])
    frames = assign_pool_buckets(kept, candidates, root, filters.near_duplicates)
    bucket_manifests = {name: _manifest(frames[frames["pool_bucket"] == name]) for name in unlabeled_buckets(folds)}
    return bucket_manifests, frames, _report(frames, counts, folds, filters.near_duplicates)


def _manifest(frames: pd.DataFrame) -> pd.DataFrame:
    """A bucket manifest (MANIFEST_SCHEMA) of unlabeled frames: no label, UNLABELED_INDEX, the unit
    as group. Sorted by image_id (pretraining shuffles; the order only has to be stable)."""
    n = len(frames)

    def nothing(value=None) -> pd.Series:  # object dtype: an empty column keeps its Arrow type
        return pd.Series([value() if callable(value) else value for _ in range(n)], dtype=object)

    return pd.DataFrame(
        {
            "image_id": frames["image_id"].to_numpy(dtype=object),
            "label": nothing(),
            "group": frames["unit"].to_numpy(dtype=object),
            "pathologies": nothing(list),
            "labels": nothing(list),
            "subset": frames["subset"].to_numpy(dtype=object),
            "source_split": nothing(),
            "magnification": np.full(n, np.nan),
            "n_captions": frames["n_captions"].to_numpy(dtype=np.int32),
            "video": frames["video"].to_numpy(dtype=object),
            "label_index": np.full(n, UNLABELED_INDEX, dtype=np.int32),
            "label_indices": nothing(list),
        }
    ).sort_values("image_id", kind="stable", ignore_index=True)


def _report(frames: pd.DataFrame, counts: dict, folds: int, mode: str) -> dict:
    """unlabeled_report.json: the label-reason rows and unlabeled frames, each counted once."""
    excluded = frames["excluded"].value_counts()
    report = {
        "near_duplicates": mode,
        "label_removed_rows": dict(counts),
        "images": len(frames),
        "removed_by": {k: int(v) for k, v in sorted(frames["removed_by"].value_counts().items())},
        "excluded": {k: int(excluded.get(k, 0)) for k in (UNREADABLE, NEAR_DUPLICATE)},
        SPANS_BUCKETS: int(excluded.get(SPANS_BUCKETS, 0)),
        "buckets": {name: int((frames["pool_bucket"] == name).sum()) for name in unlabeled_buckets(folds)},
        "folds": {
            str(fold): {
                "pool_buckets": [b for b in pool_buckets("unlabeled", fold, folds) if b not in buckets(folds)],
                **fold_facts(frames, fold, folds),
            }
            for fold in range(folds)
        },
    }
    assert counts["rows_unlabeled"] == int(frames["n_captions"].sum()), "label-reason rows do not reconcile"
    assert (
        report["images"] == sum(report["buckets"].values()) + sum(report["excluded"].values()) + report[SPANS_BUCKETS]
    )
    eligible = report["images"] - sum(report["excluded"].values())
    for facts in report["folds"].values():
        assert sum(facts[key] for key in UNLABELED_KEYS) == eligible
    log.info("unlabeled frames: %s", {k: report[k] for k in ("images", "excluded", SPANS_BUCKETS, "buckets")})
    return report


def write_unlabeled(
    bucket_manifests: Mapping[str, pd.DataFrame],
    frames: pd.DataFrame,
    report: dict,
    manifest_paths: Mapping[str, str | Path],
    frames_path: str | Path,
    report_path: str | Path,
) -> None:
    """Write one manifest per unlabeled bucket, the frames table and the report."""
    for name, manifest in bucket_manifests.items():
        write_parquet_stable(manifest, manifest_paths[name], MANIFEST_SCHEMA)
    write_parquet_stable(frames.sort_values("image_id", kind="stable"), frames_path, FRAMES_SCHEMA)
    write_json(report, report_path, sort_keys=True)


def read_fold_facts(report_path: str | Path, fold: int) -> dict:
    """A fold's unlabeled counts from unlabeled_report.json (for pretrain_info.json)."""
    facts = read_json(report_path, "unlabeled report")["folds"][str(fold)]
    return {key: facts[key] for key in UNLABELED_KEYS}
