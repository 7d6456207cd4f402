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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quiltflow.errors import UserError
from quiltflow.jsonio import write_json
from quiltflow.metadata import FILTERED_SCHEMA, write_parquet_stable

log = logging.getLogger("quiltflow.splits")

SPLITS = ("train", "val", "test")
MANIFEST_SCHEMA = FILTERED_SCHEMA.append(pa.field("label_index", pa.int32()))


def _check_fractions(fractions: Mapping[str, Any]) -> dict[str, float]:
    """Validate ``fractions`` (train/val/test, each >= 0, summing to 1; train > 0)."""
    fractions = dict(fractions or {})
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise UserError(f"splits.fractions.{unknown[0]}: unknown split (expected train, val, test)")
    out: dict[str, float] = {}
    for name in SPLITS:
        v = fractions.get(name, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise UserError(f"splits.fractions.{name}={v!r}: expected a number in [0, 1]")
        out[name] = float(v)
    if abs(sum(out.values()) - 1.0) > 1e-6:
        raise UserError(f"splits.fractions={out}: must sum to 1 (sum is {sum(out.values()):.4f})")
    if out["train"] <= 0:
        raise UserError("splits.fractions.train must be > 0")
    return out


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


def _assign_groups(
    strata: np.ndarray,
    sizes: np.ndarray,
    fixed: np.ndarray,
    weights: np.ndarray,
    n_strata: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Split index (0..2) per group; ``fixed >= 0`` pins a group, ``weights`` are split shares."""
    n_groups = len(sizes)
    split = fixed.copy()
    have = np.zeros((n_strata, 3), dtype=np.float64)
    np.add.at(have, (strata[split >= 0], split[split >= 0]), sizes[split >= 0])
    free = split < 0
    totals = np.bincount(strata[free], weights=sizes[free], minlength=n_strata)
    active = weights > 0
    # Targets count only the groups still to place, on top of what is pinned (source val).
    target = have + totals[:, None] * np.where(active, weights, 0)[None, :] / weights[active].sum()

    # Multi-image groups: largest first (power-of-two buckets), seeded order inside a bucket.
    multi = np.flatnonzero(free & (sizes > 1))
    multi = multi[rng.permutation(len(multi))]
    multi = multi[np.argsort(-np.floor(np.log2(sizes[multi])), kind="stable")]
    tgt = target.tolist()
    hv = have.tolist()
    act = [i for i in range(3) if active[i]]
    out = split.tolist()
    for g, s, n in zip(multi.tolist(), strata[multi].tolist(), sizes[multi].tolist()):
        t, h = tgt[s], hv[s]
        # Relative room left once half the group is in: a big group does not overshoot a
        # small split, and a split still empty gets the next group that fits.
        best = max(act, key=lambda i: ((t[i] - h[i] - n / 2) / t[i] if t[i] > 0 else -np.inf, -i))
        out[g] = best
        h[best] += n
    split = np.array(out, dtype=np.int64)
    have = np.array(hv)

    # Single-image groups: fill each stratum's remaining need in one shuffled slice per split.
    single = np.flatnonzero(free & (sizes == 1))
    single = single[rng.permutation(len(single))]
    single = single[np.argsort(strata[single], kind="stable")]
    bounds = np.searchsorted(strata[single], np.arange(n_strata + 1))
    for s in range(n_strata):
        members = single[bounds[s] : bounds[s + 1]]
        if len(members) == 0:
            continue
        need = np.clip(target[s] - have[s], 0, None) * active
        if need.sum() <= 0:
            need = np.where(active, weights, 0).astype(np.float64)
        counts = _largest_remainder(len(members), need)
        split[members] = np.repeat(np.arange(3), counts)
    assert (split >= 0).all() and n_groups == len(split)
    return split


def make_splits(
    table: pd.DataFrame,
    *,
    fractions: Mapping[str, Any],
    seed: int,
    use_source_val: bool = False,
) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """Split the filtered table: ({split: manifest}, label_map, report)."""
    fr = _check_fractions(fractions)
    missing = [c for c in FILTERED_SCHEMA.names if c not in table.columns]
    if missing:
        raise UserError(f"filtered table lacks column {missing[0]!r}")
    if len(table) == 0:
        raise UserError("filtered table has no rows: nothing to split")
    # Canonical input order (image_id, then original order) so the result ignores row order.
    # The filtered table is already sorted: sorting is then skipped.
    ids = pa.array(table["image_id"], type=pa.string())
    if len(ids) > 1 and not pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        order = pc.sort_indices(ids).to_numpy()  # stable: equal ids keep their row order
        table, ids = table.iloc[order].reset_index(drop=True), ids.take(pa.array(order))
    if table["label"].isna().any():
        raise UserError("filtered table has rows without a label")
    labels = pa.array(table["label"], type=pa.string())
    classes = sorted(pc.unique(labels).to_pylist())
    class_to_index = {c: i for i, c in enumerate(classes)}
    label_idx = (
        pc.index_in(labels, value_set=pa.array(classes, type=pa.string()))
        .to_numpy()
        .astype(np.int64)
    )

    group_codes, group_names = pd.factorize(table["group"].astype(str), sort=True)
    n_groups = len(group_names)
    # Stratum of a group = its most frequent label (ties -> smallest label index).
    n_cls = max(len(classes), 1)
    pair, n_of = np.unique(group_codes.astype(np.int64) * n_cls + label_idx, return_counts=True)
    g_of, l_of = pair // n_cls, pair % n_cls
    order = np.lexsort((l_of, -n_of, g_of))
    first = np.unique(g_of[order], return_index=True)[1]
    strata = l_of[order][first]
    sizes = np.bincount(group_codes, minlength=n_groups)

    fixed = np.full(n_groups, -1, dtype=np.int64)
    weights = np.array([fr[s] for s in SPLITS])
    if use_source_val:
        is_val = (table["source_split"].astype(object) == "val").to_numpy(dtype=bool)
        fixed[np.unique(group_codes[is_val])] = SPLITS.index("val")
        weights[SPLITS.index("val")] = 0.0  # val is exactly the source's val groups
    rng = np.random.default_rng(seed)
    group_split = _assign_groups(strata, sizes, fixed, weights, len(classes), rng)
    row_split = group_split[group_codes]

    # No group (video) is in two splits by construction (one split per group). No image may
    # be either: its rows are adjacent (sorted ids), and with ``dedupe: false`` they must agree.
    same = (
        pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
        if len(ids) > 1
        else np.zeros(0, bool)
    )
    bad = np.flatnonzero(same & (row_split[1:] != row_split[:-1]))
    if len(bad):
        raise UserError(
            f"image {ids[int(bad[0])].as_py()!r} has rows in two groups that fell in different "
            "splits: give each image one group"
        )

    table = table.assign(label_index=label_idx.astype(np.int32))
    manifests: dict[str, pd.DataFrame] = {}
    for i, name in enumerate(SPLITS):
        rows = np.flatnonzero(row_split == i)
        # Seeded permutation so contiguous shards are class-mixed; one stream per split.
        rows = rows[np.random.default_rng([seed, i]).permutation(len(rows))]
        manifests[name] = table.take(rows).reset_index(drop=True)

    label_map = {"classes": classes, "class_to_index": class_to_index}
    per = np.zeros((3, len(classes)), dtype=np.int64)
    np.add.at(per, (row_split, label_idx), 1)
    class_counts = {
        s: {c: int(per[i, j]) for j, c in enumerate(classes) if per[i, j]}
        for i, s in enumerate(SPLITS)
    }
    warnings = []
    for s in SPLITS:
        if fr[s] > 0 or (s == "val" and use_source_val):
            lacking = [c for c in classes if c not in class_counts[s]]
            if lacking:
                warnings.append(f"split {s} has no images of class(es) {lacking} (too few groups)")
    for w in warnings:
        log.warning(w)
    report = {
        "seed": int(seed),
        "fractions": fr,
        "use_source_val": bool(use_source_val),
        "counts": {s: len(m) for s, m in manifests.items()},
        "class_counts": class_counts,
        "groups": {s: int(n) for s, n in zip(SPLITS, np.bincount(group_split, minlength=3))},
        "warnings": warnings,
    }
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
    """Write one Parquet manifest per split plus ``label_map.json`` and ``split_report.json``."""
    for name in SPLITS:
        write_parquet_stable(manifests[name], split_paths[name], MANIFEST_SCHEMA)
    write_json(label_map, label_map_path, sort_keys=True)
    write_json(report, report_path, sort_keys=True)
