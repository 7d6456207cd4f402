"""Train/val/test manifests: stratified by label, grouped by ``group`` (no video in two splits).

Algorithm (seeded, equivalent in spirit to scikit-learn's StratifiedGroupKFold but for arbitrary
fractions and fast on 10^5 groups):

1. Each group gets one stratum: its most frequent label (ties: smallest label name).
2. Groups with several images are visited largest-first (sizes bucketed by powers of two,
   seeded random order inside a bucket, so the seed matters) and each goes to the split whose
   target for that stratum has most relative room: ``(target - have - size / 2) / target``.
3. Single-image groups (most non-Quilt images) then fill what remains of each target, per
   stratum, in one vectorised step (largest-remainder rounding).

``use_source_val`` first puts every group with a ``source_split == "val"`` row into val; the
other groups are shared between train and test in the ratio of their fractions.
A class with too few groups to reach every split is kept and reported under ``warnings``.
Fractions, ``use_source_val`` and the seed come as a ``quiltflow.core.settings.SplitSettings``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quiltflow.core.cv import buckets
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import write_json
from quiltflow.core.settings import SplitSettings
from quiltflow.core.tasks import MULTICLASS, TASKS
from quiltflow.data.units import check_one_bucket_per_video
from quiltflow.records.tables import FILTERED_SCHEMA, MANIFEST_SCHEMA, write_parquet_stable

log = logging.getLogger("quiltflow.data.splits")

SPLITS = ("train", "val", "test")


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` items into integer parts proportional to non-negative ``weights``."""
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = total * weights / weights.sum()
    base = np.floor(exact).astype(np.int64)
    rest = total - base.sum()
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def _room(target: float, placed: float, size: int) -> float:
    """Relative room a split has left once half the group is in: a big group does not
    overshoot a small split, and a split still empty gets the next group that fits."""
    return (target - placed - size / 2) / target if target > 0 else -np.inf


def _place_multi_image_groups(
    split: np.ndarray,
    groups: np.ndarray,
    strata: np.ndarray,
    sizes: np.ndarray,
    targets: np.ndarray,
    have: np.ndarray,
    open_splits: list[int],
) -> None:
    """Give each of ``groups`` (in order) the split of its stratum with most relative room;
    ``split`` and ``have`` (images per stratum and split) are updated in place."""
    split_of = split.tolist()  # Python lists: ~10^5 small steps, numpy indexing would dominate
    have_of = have.tolist()
    target_of = targets.tolist()
    for group, stratum, size in zip(groups.tolist(), strata[groups].tolist(), sizes[groups].tolist()):
        target, placed = target_of[stratum], have_of[stratum]
        best = max(open_splits, key=lambda i: (_room(target[i], placed[i], size), -i))
        split_of[group] = best
        placed[best] += size
    split[:] = split_of
    have[:] = have_of


def _place_single_image_groups(
    split: np.ndarray,
    singles: np.ndarray,
    strata: np.ndarray,
    targets: np.ndarray,
    have: np.ndarray,
    weights: np.ndarray,
) -> None:
    """Fill each stratum's remaining need with its single-image ``singles`` (already shuffled),
    one slice per split (largest-remainder rounding); ``split`` is updated in place."""
    n_strata = len(targets)
    active = weights > 0
    singles = singles[np.argsort(strata[singles], kind="stable")]
    bounds = np.searchsorted(strata[singles], np.arange(n_strata + 1))
    for stratum in range(n_strata):
        members = singles[bounds[stratum] : bounds[stratum + 1]]
        if len(members) == 0:
            continue
        need = np.clip(targets[stratum] - have[stratum], 0, None) * active
        if need.sum() <= 0:
            need = np.where(active, weights, 0).astype(np.float64)
        counts = _largest_remainder(len(members), need)
        split[members] = np.repeat(np.arange(len(weights)), counts)


def _assign_groups(
    strata: np.ndarray,
    sizes: np.ndarray,
    pinned: np.ndarray,
    weights: np.ndarray,
    n_strata: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bucket index per group; ``pinned >= 0`` fixes a group, ``weights`` are bucket shares."""
    split = pinned.copy()
    have = np.zeros((n_strata, len(weights)), dtype=np.float64)
    np.add.at(have, (strata[split >= 0], split[split >= 0]), sizes[split >= 0])
    free = split < 0
    totals = np.bincount(strata[free], weights=sizes[free], minlength=n_strata)
    active = weights > 0
    # Targets count only the groups still to place, on top of what is pinned (source val).
    targets = have + totals[:, None] * np.where(active, weights, 0)[None, :] / weights[active].sum()

    # Multi-image groups: largest first (power-of-two buckets), seeded order inside a bucket.
    multi = np.flatnonzero(free & (sizes > 1))
    multi = multi[rng.permutation(len(multi))]
    multi = multi[np.argsort(-np.floor(np.log2(sizes[multi])), kind="stable")]
    open_splits = [i for i in range(len(weights)) if active[i]]
    _place_multi_image_groups(split, multi, strata, sizes, targets, have, open_splits)

    singles = np.flatnonzero(free & (sizes == 1))
    singles = singles[rng.permutation(len(singles))]
    _place_single_image_groups(split, singles, strata, targets, have, weights)
    assert (split >= 0).all() and len(sizes) == len(split)
    return split


def _canonical_order(table: pd.DataFrame) -> tuple[pd.DataFrame, pa.Array]:
    """The table sorted by image_id (stable), so the result ignores row order; and its ids.
    The filtered table is already sorted: sorting is then skipped."""
    if "video" not in table.columns:  # a table made before videos and units were told apart
        table = table.assign(video=table["group"])
    missing = [c for c in FILTERED_SCHEMA.names if c not in table.columns]
    if missing:
        raise UserError(f"filtered table lacks column {missing[0]!r}")
    if len(table) == 0:
        raise UserError("filtered table has no rows: nothing to split")
    ids = pa.array(table["image_id"], type=pa.string())
    if len(ids) > 1 and not pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        order = pc.sort_indices(ids).to_numpy()  # stable: equal ids keep their row order
        table, ids = table.iloc[order].reset_index(drop=True), ids.take(pa.array(order))
    return table, ids


def _label_indices(table: pd.DataFrame) -> tuple[list[str], np.ndarray, pa.ListArray]:
    """(sorted class names, class index of every row's ``label``, indices of its ``labels``)."""
    if table["label"].isna().any():
        raise UserError("filtered table has rows without a label")
    labels = pa.array(table["label"], type=pa.string())
    # Through a table: a concatenated frame's Arrow column may be chunked.
    targets = pa.Table.from_pandas(table[["labels"]], preserve_index=False)["labels"].combine_chunks()
    targets = targets.cast(pa.list_(pa.string()))
    classes = sorted(set(pc.unique(labels).to_pylist()) | set(pc.unique(targets.flatten()).to_pylist()))
    value_set = pa.array(classes, type=pa.string())
    label_index = pc.index_in(labels, value_set=value_set).to_numpy().astype(np.int64)
    flat = pc.index_in(targets.flatten(), value_set=value_set).cast(pa.int32())
    label_indices = pa.ListArray.from_arrays(targets.offsets, flat)
    return classes, label_index, label_indices


def _group_strata(
    table: pd.DataFrame, label_index: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group code of every row, stratum of every group, images of every group).
    A group's stratum is its most frequent label (ties: smallest label index)."""
    group_code, group_names = pd.factorize(table["group"].astype(str), sort=True)
    n_classes = max(n_classes, 1)
    pair, pair_rows = np.unique(group_code.astype(np.int64) * n_classes + label_index, return_counts=True)
    group_of_pair, label_of_pair = pair // n_classes, pair % n_classes
    order = np.lexsort((label_of_pair, -pair_rows, group_of_pair))
    first = np.unique(group_of_pair[order], return_index=True)[1]
    strata = label_of_pair[order][first]
    sizes = np.bincount(group_code, minlength=len(group_names))
    return group_code, strata, sizes


def _split_groups(
    table: pd.DataFrame,
    group_code: np.ndarray,
    strata: np.ndarray,
    sizes: np.ndarray,
    n_classes: int,
    settings: SplitSettings,
) -> np.ndarray:
    """Bucket index per group; with ``use_source_val`` val is exactly the source's val groups.
    With folds, every bucket (half a fold) gets an equal share."""
    pinned = np.full(len(sizes), -1, dtype=np.int64)
    if settings.folds > 1:
        weights = np.full(len(buckets(settings.folds)), 1.0)
        return _assign_groups(strata, sizes, pinned, weights, n_classes, np.random.default_rng(settings.seed))
    weights = np.array([settings.fractions[name] for name in SPLITS])
    if settings.use_source_val:
        is_val = (table["source_split"].astype(object) == "val").to_numpy(dtype=bool)
        pinned[np.unique(group_code[is_val])] = SPLITS.index("val")
        weights[SPLITS.index("val")] = 0.0
    rng = np.random.default_rng(settings.seed)
    return _assign_groups(strata, sizes, pinned, weights, n_classes, rng)


def _check_one_split_per_image(ids: pa.Array, row_split: np.ndarray) -> None:
    """No group (video) is in two splits by construction (one split per group). No image may
    be either: its rows are adjacent (sorted ids), and with ``dedupe: false`` they must agree."""
    same = pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False) if len(ids) > 1 else np.zeros(0, bool)
    bad = np.flatnonzero(same & (row_split[1:] != row_split[:-1]))
    if len(bad):
        raise UserError(
            f"image {ids[int(bad[0])].as_py()!r} has rows in two groups that fell in different "
            "splits: give each image one group"
        )


def _manifests(
    table: pd.DataFrame,
    row_split: np.ndarray,
    label_index: np.ndarray,
    label_indices: pa.ListArray,
    settings: SplitSettings,
) -> dict[str, pd.DataFrame]:
    """One manifest per bucket, rows in a seeded order so contiguous shards are class-mixed."""
    seed = settings.seed
    table = table.assign(
        label_index=label_index.astype(np.int32),
        label_indices=pd.Series(pd.arrays.ArrowExtensionArray(label_indices), index=table.index),
    )
    manifests: dict[str, pd.DataFrame] = {}
    for i, name in enumerate(buckets(settings.folds)):
        rows = np.flatnonzero(row_split == i)
        rows = rows[np.random.default_rng([seed, i]).permutation(len(rows))]  # one stream each
        manifests[name] = table.take(rows).reset_index(drop=True)
    return manifests


def _split_report(
    manifests: Mapping[str, pd.DataFrame],
    classes: list[str],
    row_split: np.ndarray,
    label_indices: pa.ListArray,
    group_split: np.ndarray,
    settings: SplitSettings,
) -> dict:
    """split_report.json: images per bucket, images per bucket and class (each label an image
    carries: with one label per image, images per class), a warning per bucket lacking a class."""
    names = buckets(settings.folds)
    per_split = np.zeros((len(names), len(classes)), dtype=np.int64)
    row_of_entry = np.repeat(np.arange(len(row_split)), np.diff(label_indices.offsets.to_numpy()))
    np.add.at(per_split, (row_split[row_of_entry], label_indices.flatten().to_numpy()), 1)
    class_counts = {
        name: {c: int(per_split[i, j]) for j, c in enumerate(classes) if per_split[i, j]}
        for i, name in enumerate(names)
    }
    warnings = []
    for name in names:
        if settings.folds > 1 or settings.fractions[name] > 0 or (name == "val" and settings.use_source_val):
            lacking = [c for c in classes if c not in class_counts[name]]
            if lacking:
                warnings.append(f"split {name} has no images of class(es) {lacking} (too few groups)")
    for warning in warnings:
        log.warning(warning)
    groups_per_split = np.bincount(group_split, minlength=len(names))
    return {
        "seed": int(settings.seed),
        "fractions": dict(settings.fractions),
        "use_source_val": bool(settings.use_source_val),
        "counts": {name: len(m) for name, m in manifests.items()},
        "class_counts": class_counts,
        "groups": {name: int(n) for name, n in zip(names, groups_per_split)},
        "warnings": warnings,
        "folds": int(settings.folds),
    }


def make_splits(
    table: pd.DataFrame, settings: SplitSettings, task: str = MULTICLASS
) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """Split the filtered table: ({split: manifest}, label_map, report). ``task`` (quiltflow.core.tasks)
    is recorded in the label map; the split is stratified on ``label`` (the first label) either way."""
    if task not in TASKS:
        raise UserError(f"task {task!r} is not one of {', '.join(TASKS)}")
    table, ids = _canonical_order(table)
    classes, label_index, label_indices = _label_indices(table)
    if task == MULTICLASS and len(label_indices.flatten()) != len(table):
        raise UserError("filtered table has images with several labels: set filters.label_policy: multilabel")
    group_code, strata, sizes = _group_strata(table, label_index, len(classes))
    group_split = _split_groups(table, group_code, strata, sizes, len(classes), settings)
    row_split = group_split[group_code]
    _check_one_split_per_image(ids, row_split)
    manifests = _manifests(table, row_split, label_index, label_indices, settings)
    check_one_bucket_per_video(manifests)
    label_map = {"classes": classes, "class_to_index": {c: i for i, c in enumerate(classes)}, "task": task}
    report = _split_report(manifests, classes, row_split, label_indices, group_split, settings)
    log.info("split %d rows into %s", len(table), report["counts"])
    return manifests, label_map, report


def write_splits(
    manifests: Mapping[str, pd.DataFrame],
    label_map: dict,
    report: dict,
    split_paths: Mapping[str, str | Path],
    label_map_path: str | Path,
    report_path: str | Path,
) -> None:
    """Write one Parquet manifest per bucket plus ``label_map.json`` and ``split_report.json``."""
    for name, manifest in manifests.items():
        write_parquet_stable(manifest, split_paths[name], MANIFEST_SCHEMA)
    write_json(label_map, label_map_path, sort_keys=True)
    write_json(report, report_path, sort_keys=True)


def fold_assignment(manifests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``folds.parquet``: image_id, group, label, fold, bucket of every image.

    ``fold`` is the run whose test set holds the image: with k folds, the fold of its bucket
    (``fold{f}a``/``fold{f}b``); with one holdout, 0 for test images and -1 for train/val ones.
    """
    parts = [
        m[["image_id", "group", "label"]].assign(fold=_fold_of_bucket(name), bucket=name)
        for name, m in manifests.items()
    ]
    table = pd.concat(parts, ignore_index=True).sort_values("image_id", kind="stable")
    return table.reset_index(drop=True).astype({"fold": "int32"})


def _fold_of_bucket(name: str) -> int:
    if name.startswith("fold"):
        return int(name[len("fold") : -1])
    return 0 if name == "test" else -1
