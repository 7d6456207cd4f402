"""Filter a dataset's metadata down to one labelled row per usable image.

Three input formats feed the same filtered table (columns in ``docs/interfaces.md``):

* ``quilt``  – the Quilt-1M lookup CSV (or a Parquet copy of it): one row per caption.
* ``csv``    – any CSV/Parquet with a path, a label and optionally a group column
  (names from ``columns = {"path": ..., "label": ..., "group": ... or None}``; an optional
  ``"split"`` entry names a column copied to ``source_split``).
* ``folder`` – one sub-folder per class under ``image_root`` (no metadata file).

The readers are in ``quiltflow.data.lookup``, the table's schema and Parquet I/O in
``quiltflow.records.tables``; the filters come as a ``quiltflow.core.settings.FilterSettings``.

Each dropped row is counted exactly once, under the FIRST reason in this order:

``empty_path``           the path cell is empty.
``unsafe_path``          absolute path, or a path that resolves outside ``image_root`` (``..``).
``not_image_file``       (folder format) a file without an image extension, or a hidden file.
``subset_excluded``      (quilt) ``subset`` not in ``filters.subsets``.
``not_histology``        (quilt) ``not_histology == 1`` and ``filters.drop_not_histology``.
``magnification``        (quilt) magnification level not in ``filters.magnifications``.
``small_image``          (quilt) ``min(height, width) < filters.min_image_side`` (unknown kept).
``single_wsi``           (quilt) ``filters.single_wsi`` true: ``single_wsi != 1`` (unknown dropped);
                         false: ``single_wsi == 1``.
``malformed_pathology``  the ``pathology`` cell (quilt), or a csv label cell written as a list
                         (``['A', 'B']``), is not a list of strings.
``no_label``             empty pathology list / empty label cell.
``label_not_in_vocabulary`` (quilt) the first pathology entry is not in ``filters.classes``
                         (``multilabel``: no entry is).
``image_missing``        no such file under ``image_root`` (one directory listing, no stat per row).
``class_excluded``       the image's label is in ``filters.exclude_classes``.
``class_too_small``      the label has fewer than ``filters.min_per_class`` images.
``class_not_top_k``      the label is not among the ``filters.top_k_classes`` largest classes.
``duplicate_row``        another caption row of an image already kept (``filters.dedupe``).
``near_duplicate``       ``filters.near_duplicates: drop``: the image is within
                         ``near_duplicate_distance`` bits of a kept image with a smaller image_id.

A filter on a Quilt column the lookup lacks (public copies with 13 columns have no
``not_histology`` / ``single_wsi``) stops the run with one line, unless it is at its neutral value.
Near-duplicates (``quiltflow.data.neardup``) are searched among the images every other filter kept;
``group`` mode gives each cluster the smallest group of its members. Images that cannot be
decoded for hashing are counted (``near_duplicates.unreadable``) and kept: the shard jobs skip
them with their exact reason.

Class reasons are decided per image (label of its first surviving row) and count all of that
image's surviving rows.

``filters.label_policy``: ``primary`` labels an image with the first entry of its list (every
class filter acts on that label). ``multilabel`` keeps every entry as a target: the vocabulary and
the class filters remove *labels* from an image's list (``min_per_class`` and ``top_k_classes``
count label occurrences, i.e. images carrying the label), and an image left without a label is
dropped under the reason that removed its last one. The removed entries of kept images are counted
in the report (``label_entries``), so entries reconcile too; ``label`` is then the first surviving
entry (the stratum of the split) and ``labels`` the surviving list in the cell's order. The report always reconciles:
``rows_in == rows_kept + sum(dropped.values())``. With ``dedupe`` (default) ``rows_kept`` equals
``images_kept`` and ``n_captions`` counts every surviving row of the image; with ``dedupe: false``
every surviving row stays in the table (``image_id`` then repeats) and class filters count rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quiltflow.core.errors import UserError
from quiltflow.core.settings import FilterSettings
from quiltflow.data.image_hashes import ImageHashes, hash_images
from quiltflow.data.lookup import (
    IMAGE_EXTENSIONS,
    PATH_EMPTY,
    PATH_UNSAFE,
    VIDEO_ID_REGEX,
    Rows,
    has_byte,
    list_files,
    list_root,
    normalize_paths,
    read_rows,
)
from quiltflow.data.neardup import HASH_FLAT, HASH_UNREADABLE, cluster_hashes
from quiltflow.data.units import check_one_group_per_video, join_videos
from quiltflow.records.tables import FILTERED_SCHEMA, arrow_to_pandas

log = logging.getLogger("quiltflow.data.metadata")

DROP_REASONS = (
    "empty_path",
    "unsafe_path",
    "not_image_file",
    "subset_excluded",
    "not_histology",
    "magnification",
    "small_image",
    "single_wsi",
    "malformed_pathology",
    "no_label",
    "label_not_in_vocabulary",
    "image_missing",
    "class_excluded",
    "class_too_small",
    "class_not_top_k",
    "duplicate_row",
    "near_duplicate",
)
_REASON_CODE = {name: i + 1 for i, name in enumerate(DROP_REASONS)}  # 0 = kept
# Reasons that judge a row's label, not its image: the image is still a usable frame, and
# ``pretraining.<name>.pool: unlabeled`` takes it without its label (:func:`label_removed_images`).
LABEL_REASONS = (
    "malformed_pathology",
    "no_label",
    "label_not_in_vocabulary",
    "class_excluded",
    "class_too_small",
    "class_not_top_k",
)
_QUILT_ONLY_FILTERS = ("subsets", "drop_not_histology", "magnifications", "min_image_side", "single_wsi", "classes")
# Row filters of the Quilt columns, with the filters key each one reads.
_QUILT_FILTER_KEYS = {
    "subset_excluded": "subsets",
    "not_histology": "drop_not_histology",
    "magnification": "magnifications",
    "small_image": "min_image_side",
    "single_wsi": "single_wsi",
}
# The lookup columns each Quilt filter reads, and the value that needs none (its neutral value).
_FILTER_COLUMNS = {
    "drop_not_histology": (("not_histology",), False),
    "magnifications": (("magnification",), None),
    "min_image_side": (("height", "width"), 0),
    "single_wsi": (("single_wsi",), None),
}

# Arrow kernels and directory reads release the GIL: the root listing and the id ranking run
# here while the main thread parses and filters. Idle threads cost nothing; none start until used.
_BACKGROUND = ThreadPoolExecutor(max_workers=2, thread_name_prefix="quiltflow-metadata")


def _shown(value: Any) -> Any:
    """A settings value as the config spelled it (tuples were YAML lists)."""
    return list(value) if isinstance(value, tuple) else value


def _empty_error(stage: str, filters: FilterSettings, rows_in: int, detail: str = "") -> UserError:
    """One-line message naming the filter (or check) that left nothing."""
    if stage in _QUILT_FILTER_KEYS:
        key = _QUILT_FILTER_KEYS[stage]
        value = _shown(getattr(filters, key))
        return UserError(f"filters.{key}={value!r} left no rows ({rows_in} rows in)")
    if stage == "label_not_in_vocabulary":
        return UserError(f"filters.classes ({len(filters.classes)} names) matched no label {detail}; set it to null?")
    if stage == "class_excluded":
        excluded = _shown(filters.exclude_classes)
        return UserError(f"filters.exclude_classes={excluded!r} excluded every class")
    if stage == "class_too_small":
        return UserError(f"filters.min_per_class={filters.min_per_class} left no class with enough images {detail}")
    if stage == "image_missing":
        return UserError(f"no usable row points to an existing file under image_root {detail}")
    if stage == "not_image_file":
        return UserError(f"no file with an image extension {IMAGE_EXTENSIONS} in the class folders {detail}")
    return UserError(
        f"every remaining row was dropped as {stage!r} ({rows_in} rows in; see the module "
        "docstring of quiltflow.data.metadata for the reasons)"
    )


class _Drops:
    """The drop reason of every input row (0 = still kept), filled in pipeline order."""

    def __init__(self, rows: Rows, filters: FilterSettings) -> None:
        self.filters = filters
        self.rows_in = rows.n
        self.reason = np.zeros(rows.n, dtype=np.int8)
        if rows.not_image_file is not None:
            self.reason[rows.not_image_file] = _REASON_CODE["not_image_file"]

    def alive(self) -> np.ndarray:
        return np.flatnonzero(self.reason == 0)

    def drop(self, name: str, mask: np.ndarray, detail: str = "") -> None:
        """Give reason ``name`` to rows still kept where ``mask``; fail if none is left
        (``detail``: extra words for that error)."""
        self.reason[(self.reason == 0) & mask] = _REASON_CODE[name]
        if not (self.reason == 0).any():
            raise _empty_error(name, self.filters, self.rows_in, detail)


@dataclass
class _Paths:
    """The distinct paths after normalisation, and each row's index into them."""

    norm: pa.Array  # normalised distinct paths (null where empty or unsafe)
    changed: bool  # whether normalisation changed any path
    of_row: np.ndarray  # index into ``norm``; len(norm) = "no path" slot
    rank: Future  # _dense_rank(norm), computed in the background
    exists: np.ndarray | None = None  # per ``norm`` slot (+ the "no path" slot): the file is there


@dataclass
class _NearDuplicates:
    """The near-duplicate search over the kept images (distinct, in image_id order)."""

    root: np.ndarray | None  # cluster root per image (None when off)
    report: dict


@dataclass
class _LabelSets:
    """Multi-label policy: every label of each distinct label cell, and which labels survive."""

    member: np.ndarray  # bool [cells, classes]: the cell lists the class
    rank: np.ndarray  # int [cells, classes]: position of the class in the cell (len = absent)
    list_code: np.ndarray  # cell of every input row
    allowed: np.ndarray  # bool [classes]: in filters.classes (all true without a vocabulary)
    removed: dict  # reason -> bool [classes] of the labels that reason removed


@dataclass
class _Units:
    """What class filters and dedupe decide on: images (``dedupe``) or surviving rows."""

    alive: np.ndarray  # rows still kept before the class filters
    rows: np.ndarray  # the row standing for each unit (first row of an image)
    first_pos: np.ndarray  # positions in ``alive`` of those rows
    of_alive: np.ndarray  # unit of each row in ``alive``
    n_captions: np.ndarray  # rows of each unit's image
    label: np.ndarray  # label code of each unit
    image_code: np.ndarray  # image of every input row (normalised path code)
    reason: np.ndarray  # int8 class-level drop reason per unit (0 = kept)
    label_set: np.ndarray | None = None  # bool [units, classes]: surviving labels (multilabel)


def _ignored_filters(rows: Rows, filters: FilterSettings, fmt: str) -> list[str]:
    """Quilt-only filters set away from their defaults on a format without those columns."""
    if rows.quilt:
        return []
    defaults = FilterSettings.from_config({})
    ignored = [k for k in _QUILT_ONLY_FILTERS if getattr(filters, k) != getattr(defaults, k)]
    if ignored:
        log.warning("format %s has no %s columns: filters %s ignored", fmt, "Quilt", ignored)
    return ignored


def _drop_bad_paths(rows: Rows, drops: _Drops, image_root: Path) -> _Paths:
    """Path safety, decided once per distinct path and mapped back to the rows."""
    n_paths = len(rows.paths)
    norm_paths, verdict, changed = normalize_paths(rows.paths)
    # Sort order of the image ids (for the output table), ranked while the filters run.
    rank = _BACKGROUND.submit(_dense_rank, norm_paths)
    verdict = np.concatenate([verdict, [PATH_EMPTY]])
    of_row = np.where(rows.path_code < 0, n_paths, rows.path_code)
    if rows.not_image_file is not None and not (drops.reason == 0).any():
        raise _empty_error("not_image_file", drops.filters, rows.n, f"under {image_root}")
    drops.drop("empty_path", verdict[of_row] == PATH_EMPTY)
    drops.drop("unsafe_path", verdict[of_row] == PATH_UNSAFE)
    return _Paths(norm_paths, changed, of_row, rank)


def _check_filter_columns(rows: Rows, filters: FilterSettings, metadata_path: str | Path | None) -> None:
    """A Quilt filter away from its neutral value needs its column: never a silent no-op."""
    for key, (needed, neutral) in _FILTER_COLUMNS.items():
        value = getattr(filters, key)
        missing = [c for c in needed if c not in rows.columns]
        if value != neutral and missing:
            raise UserError(
                f"config key filters.{key}: {json.dumps(_shown(value))}, but the lookup {metadata_path} has no "
                f"column {missing[0]} ({len(rows.columns)}-column copy?); set it to {json.dumps(neutral)}"
            )


def _drop_by_quilt_columns(rows: Rows, filters: FilterSettings, drops: _Drops) -> None:
    """The filters on the Quilt lookup's own columns."""
    keep_subset = np.array([s in filters.subsets for s in rows.subsets] + [False])
    drops.drop(
        "subset_excluded",
        ~keep_subset[np.where(rows.subset_code < 0, len(rows.subsets), rows.subset_code)],
    )
    if filters.drop_not_histology:
        drops.drop("not_histology", rows.not_histology == 1)
    if filters.magnifications is not None:
        levels = [float(m) for m in filters.magnifications if m is not None]
        keep = np.isin(rows.magnification, levels)
        if None in filters.magnifications:
            keep |= np.isnan(rows.magnification)
        drops.drop("magnification", ~keep)
    if filters.min_image_side > 0:
        with np.errstate(invalid="ignore"):
            side = np.fmin(rows.height, rows.width)
        drops.drop("small_image", side < filters.min_image_side)
    if filters.single_wsi is not None:
        single = rows.single_wsi == 1
        drops.drop("single_wsi", ~single if filters.single_wsi else single)


def _raw_labels(rows: Rows) -> dict[str, int]:
    """Rows per raw label value (Quilt: the first pathology entry), before any filter."""
    counts = np.bincount(rows.label_code[rows.label_code >= 0], minlength=len(rows.classes))
    return {rows.classes[c]: int(k) for c, k in enumerate(counts) if k}


def _label_sets(rows: Rows, filters: FilterSettings) -> _LabelSets | None:
    """The label cells as a membership matrix (``multilabel`` policy only; None for ``primary``).
    A folder dataset has one label per image: each class is its own one-entry cell."""
    if filters.label_policy != "multilabel":
        return None
    k = len(rows.classes)
    if rows.label_lists is None:
        lists, list_code = [(c,) for c in range(k)] + [()], np.where(rows.label_code < 0, k, rows.label_code)
    else:
        lists, list_code = rows.label_lists, rows.label_list_code
    rank = np.full((len(lists), k), k, dtype=np.int32)
    for cell, codes in enumerate(lists):
        rank[cell, list(codes)] = np.arange(len(codes))
    allowed = np.ones(k, dtype=bool)
    if rows.quilt and filters.classes is not None:
        allowed = np.array([c in filters.classes for c in rows.classes], dtype=bool)
    return _LabelSets(rank < k, rank, list_code, allowed, {"label_not_in_vocabulary": ~allowed})


def _drop_outside_vocabulary(rows: Rows, filters: FilterSettings, drops: _Drops, sets: _LabelSets | None) -> None:
    """``filters.classes``: labels outside the allowed vocabulary (Quilt only). Multi-label: a row
    goes when none of its entries is allowed (the others lose their disallowed entries later)."""
    if not rows.quilt or filters.classes is None:
        return
    seen = sorted(_raw_labels(rows).items(), key=lambda kv: -kv[1])[:5]
    detail = f"(most frequent labels: {', '.join(f'{k!r} {v}' for k, v in seen)})"
    if sets is not None:
        drops.drop("label_not_in_vocabulary", ~(sets.member & sets.allowed).any(axis=1)[sets.list_code], detail)
        return
    allowed = np.array([c in filters.classes for c in rows.classes] + [True, True], dtype=bool)
    drops.drop("label_not_in_vocabulary", ~allowed[rows.label_code], detail)


def _drop_missing_images(rows: Rows, paths: _Paths, drops: _Drops, image_root: Path, root_listing: pa.Array) -> None:
    """Existence: one listing per folder used, then one hashed set-membership pass."""
    listing = list_files(image_root, paths.norm, root_listing)
    exists = pc.fill_null(pc.is_in(paths.norm, value_set=listing), False).to_numpy(zero_copy_only=False)
    exists = np.concatenate([exists, [False]])
    paths.exists = exists
    first_alive = drops.alive()[:1]
    example = paths.norm[int(rows.path_code[first_alive[0]])].as_py() if len(first_alive) else ""
    detail = f"{image_root} (e.g. {example!r} is not there; {len(listing)} entries listed)"
    drops.drop("image_missing", ~exists[paths.of_row], detail)


def _image_units(rows: Rows, paths: _Paths, drops: _Drops, dedupe: bool) -> _Units:
    """Group the surviving rows into images (``dedupe``) or keep each row as its own unit."""
    n_paths = len(rows.paths)
    # Normalisation may map several raw paths onto one image id.
    if paths.changed:
        image_of_path = pc.fill_null(paths.norm.dictionary_encode().indices, -1).to_numpy(zero_copy_only=False)
        image_code = np.append(image_of_path.astype(np.int64), -1)[paths.of_row]
    else:
        image_code = rows.path_code
    alive = drops.alive()
    codes_alive = image_code[alive]
    rows_of_image = np.bincount(codes_alive, minlength=n_paths)
    if dedupe:
        # First surviving row of each image, without sorting: O(rows).
        first_of_image = np.full(n_paths, len(alive), dtype=np.int64)
        np.minimum.at(first_of_image, codes_alive, np.arange(len(alive)))
        present = rows_of_image > 0
        first_pos = first_of_image[present]
        of_alive = (np.cumsum(present) - 1)[codes_alive]
        n_captions = rows_of_image[present]
    else:
        first_pos = np.arange(len(alive))
        of_alive = np.arange(len(alive))
        n_captions = rows_of_image[codes_alive]
    unit_rows = alive[first_pos]
    return _Units(
        alive=alive,
        rows=unit_rows,
        first_pos=first_pos,
        of_alive=of_alive,
        n_captions=n_captions,
        label=rows.label_code[unit_rows],
        image_code=image_code,
        reason=np.zeros(len(unit_rows), dtype=np.int8),
    )


def _drop_classes(classes: list[str], units: _Units, filters: FilterSettings, rows_in: int) -> None:
    """Class-level filters, on images (or rows without dedupe)."""
    reason, label = units.reason, units.label
    if filters.exclude_classes:
        excluded = np.array([c in filters.exclude_classes for c in classes], dtype=bool)
        reason[excluded[label]] = _REASON_CODE["class_excluded"]
        if not (reason == 0).any():
            raise _empty_error("class_excluded", filters, rows_in)
    sizes = np.bincount(label[reason == 0], minlength=len(classes))
    if filters.min_per_class > 1:
        small = sizes < filters.min_per_class
        reason[(reason == 0) & small[label]] = _REASON_CODE["class_too_small"]
        if not (reason == 0).any():
            largest = f"(largest class has {int(sizes.max())})"
            raise _empty_error("class_too_small", filters, rows_in, largest)
        sizes = np.where(small, 0, sizes)
    if filters.top_k_classes is not None:
        ranked = sorted((c for c in range(len(classes)) if sizes[c] > 0), key=lambda c: (-sizes[c], classes[c]))
        top = np.zeros(len(classes), dtype=bool)
        top[ranked[: filters.top_k_classes]] = True
        reason[(reason == 0) & ~top[label]] = _REASON_CODE["class_not_top_k"]


def _drop_label_sets(
    classes: list[str], units: _Units, sets: _LabelSets, filters: FilterSettings, rows_in: int
) -> None:
    """Multi-label class filters: each removes labels from every image; an image left without a
    label is dropped under that filter's reason. The unit's ``label`` becomes its first survivor."""
    cells = sets.list_code[units.rows]
    member, reason, keep = sets.member[cells], units.reason, sets.allowed.copy()

    def remove(name: str, labels: np.ndarray, detail: str = "") -> None:
        sets.removed[name] = labels & keep  # disjoint per reason: each entry is counted once
        keep[labels] = False
        reason[(reason == 0) & ~(member & keep).any(axis=1)] = _REASON_CODE[name]
        if not (reason == 0).any():
            raise _empty_error(name, filters, rows_in, detail)

    if filters.exclude_classes:
        remove("class_excluded", np.array([c in filters.exclude_classes for c in classes], dtype=bool))
    sizes = (member[reason == 0] & keep).sum(axis=0)
    if filters.min_per_class > 1:
        remove("class_too_small", sizes < filters.min_per_class, f"(largest class has {int(sizes.max())})")
        sizes = np.where(keep, sizes, 0)
    if filters.top_k_classes is not None:
        ranked = sorted((c for c in range(len(classes)) if sizes[c] > 0), key=lambda c: (-sizes[c], classes[c]))
        top = np.zeros(len(classes), dtype=bool)
        top[ranked[: filters.top_k_classes]] = True
        remove("class_not_top_k", ~top)
    units.label_set = member & keep
    first = np.where(units.label_set, sets.rank[cells], len(classes)).argmin(axis=1)
    units.label = np.where(reason == 0, first, units.label)


def _label_entries(units: _Units, sets: _LabelSets | None) -> dict | None:
    """Multi-label: the label entries of the kept images, kept or removed by reason (they add up)."""
    if sets is None:
        return None
    kept = units.reason == 0
    member = sets.member[sets.list_code[units.rows[kept]]]
    removed = {name: int(member[:, labels].sum()) for name, labels in sets.removed.items()}
    entries = {"in": int(member.sum()), "kept": int(units.label_set[kept].sum()), "removed": removed}
    assert entries["in"] == entries["kept"] + sum(removed.values())
    return entries


def _labels_column(classes: list[str], units: _Units, sets: _LabelSets | None) -> pa.Array:
    """Each kept unit's labels (list<string>): its one label, or its surviving labels in the order
    of its cell."""
    kept = units.reason == 0
    names = pa.array(classes, type=pa.string())
    if sets is None:
        codes, offsets = units.label[kept], np.arange(int(kept.sum()) + 1, dtype=np.int32)
    else:
        label_set = units.label_set[kept]
        position = np.where(label_set, sets.rank[sets.list_code[units.rows[kept]]], len(classes))
        order = np.argsort(position, axis=1, kind="stable")
        counts = label_set.sum(axis=1)
        codes = order[np.arange(len(classes)) < counts[:, None]]  # row-major: each unit in turn
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(codes)))


def _near_duplicates(
    rows: Rows,
    paths: _Paths,
    units: _Units,
    image_root: Path,
    filters: FilterSettings,
    threads: int,
    image_hashes: ImageHashes | None,
) -> _NearDuplicates:
    """Join near-identical kept images (hashes from ``image_hashes``, else computed once here);
    ``drop`` mode marks the units of all but the first image (by image_id) of each cluster."""
    if filters.near_duplicates == "off":
        return _NearDuplicates(None, {"mode": "off"})
    started = time.perf_counter()
    keep = np.flatnonzero(units.reason == 0)
    unit_rank = paths.rank.result()[rows.path_code[units.rows[keep]]]
    ranks, first = np.unique(unit_rank, return_index=True)  # distinct images, image_id order
    names = paths.norm.take(pa.array(rows.path_code[units.rows[keep[first]]])).to_pylist()
    if image_hashes is None:  # no hash table (a call outside the workflow): hash here
        image_hashes = hash_images(names, image_root, threads)[0]
    hashes, status = image_hashes.of(names)
    clusters = cluster_hashes(hashes, status, filters.near_duplicate_distance)
    sizes = clusters.sizes
    is_root = clusters.root == np.arange(len(ranks))
    dropped = 0
    if filters.near_duplicates == "drop":
        dropped = int((~is_root).sum())
        units.reason[keep[~is_root[np.searchsorted(ranks, unit_rank)]]] = _REASON_CODE["near_duplicate"]
    report = {
        "mode": filters.near_duplicates,
        "max_distance": filters.near_duplicate_distance,
        "images_hashed": int(len(ranks)),
        "unreadable": int((status == HASH_UNREADABLE).sum()),
        "flat": int((status == HASH_FLAT).sum()),
        "clusters": int((is_root & (sizes > 1)).sum()),
        "images_in_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "images_dropped": dropped,
        "groups_merged": 0,
    }
    if report["unreadable"]:
        log.warning(
            "near-duplicates: %d kept images could not be decoded (kept; sharding skips them)", report["unreadable"]
        )
    # Time goes to the log, not the report: equal input must give an equal report.
    log.info("near-duplicates: %s in %.1f s", report, time.perf_counter() - started)
    return _NearDuplicates(clusters.root, report)


def _merge_near_duplicate_groups(table: pd.DataFrame, near: _NearDuplicates) -> None:
    """``group`` mode: a cluster joins the *videos* of its members into one unit, so every frame
    of those videos shares one group (quiltflow.data.units). ``table`` is sorted by image_id, like
    the clusters."""
    if near.root is None or near.report["mode"] != "group":
        return
    image = pd.factorize(table["image_id"], sort=False)[0]  # 0, 1, ... in image_id order
    if len(image) and image.max() + 1 != len(near.root):
        raise AssertionError("near-duplicate clusters and the filtered table disagree")
    table["group"], merge = join_videos(table["video"], near.root[image])
    near.report.update(
        groups_merged=merge.groups_merged,
        units=merge.units,
        largest_unit_videos=merge.largest_unit_videos,
        largest_unit_images=merge.largest_unit_images,
    )


def _settle_rows(units: _Units, drops: _Drops) -> None:
    """Map unit decisions back onto every surviving row; extra caption rows are duplicates."""
    row_reason = units.reason[units.of_alive]
    is_first = np.zeros(len(units.alive), dtype=bool)
    is_first[units.first_pos] = True
    row_reason[(row_reason == 0) & ~is_first] = _REASON_CODE["duplicate_row"]
    drops.reason[units.alive] = row_reason


def _report(fmt: str, rows: Rows, units: _Units, drops: _Drops, filters: FilterSettings, extra: dict) -> dict:
    """filter_report.json: what came in, what was kept, and every dropped row by reason."""
    keep_units = units.reason == 0
    kept_rows = units.rows[keep_units]
    dropped_counts = np.bincount(drops.reason, minlength=len(DROP_REASONS) + 1)
    if units.label_set is None:
        kept_sizes = np.bincount(units.label[keep_units], minlength=len(rows.classes))
    else:  # multilabel: images carrying each label
        kept_sizes = units.label_set[keep_units].sum(axis=0)
    images_kept = len(kept_rows) if filters.dedupe else len(np.unique(units.image_code[kept_rows]))
    report = {
        "format": fmt,
        "rows_in": int(rows.n),
        "distinct_images_in": int(len(rows.paths)),
        "rows_kept": int(dropped_counts[0]),
        "images_kept": int(images_kept),
        "dropped": {name: int(dropped_counts[code]) for name, code in _REASON_CODE.items() if dropped_counts[code]},
        "class_counts": {rows.classes[c]: int(k) for c, k in enumerate(kept_sizes) if k},
        "filters": filters.as_dict(),
        "raw_labels": _raw_labels(rows),
        **{key: value for key, value in extra.items() if value not in ([], None)},
    }
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    return report


def filter_metadata(
    fmt: str,
    metadata_path: str | Path | None,
    image_root: str | Path,
    filters: FilterSettings,
    columns: Mapping[str, Any] | None,
    threads: int = 1,
    image_hashes: ImageHashes | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Filter ``metadata_path`` (format ``fmt``) against ``image_root``: (table, report).
    Near-duplicates are looked up in ``image_hashes`` (rule hash_images); without it the kept
    images are hashed here on ``threads`` threads."""
    run = _apply_filters(fmt, metadata_path, image_root, filters, columns, threads, image_hashes)
    rows, units, label_sets = run.rows, run.units, run.label_sets
    keep_units = units.reason == 0
    labels = (units.label[keep_units], _labels_column(rows.classes, units, label_sets))
    table, unmatched = _build_table(
        rows, units.rows[keep_units], labels, run.paths.norm, units.n_captions[keep_units], run.paths.rank.result()
    )
    _merge_near_duplicate_groups(table, run.near)
    check_one_group_per_video(table)
    extra = {
        "ignored_filters": run.ignored,
        "near_duplicates": run.near.report,
        "label_entries": _label_entries(units, label_sets),
    }
    if rows.quilt:
        extra["video_id_unmatched"] = unmatched
    report = _report(fmt, rows, units, run.drops, filters, extra)
    log.info(
        "kept %d images (%d rows) of %d rows; dropped %s",
        report["images_kept"],
        report["rows_kept"],
        rows.n,
        report["dropped"],
    )
    return table, report


@dataclass
class _Filtered:
    """Every row's verdict after the filters, and what the table and report are built from."""

    rows: Rows
    paths: _Paths
    drops: _Drops
    units: _Units
    near: _NearDuplicates
    label_sets: _LabelSets | None
    ignored: list[str]


def _apply_filters(
    fmt: str,
    metadata_path: str | Path | None,
    image_root: str | Path,
    filters: FilterSettings,
    columns: Mapping[str, Any] | None,
    threads: int,
    image_hashes: ImageHashes | None,
) -> _Filtered:
    """Run every filter in the documented order; each row ends with one reason (0 = kept)."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise UserError(f"image_root {image_root} does not exist or is not a directory")
    # The root listing (a flat Quilt folder: ~10^6 names) is read while the metadata parses.
    root_listing = _BACKGROUND.submit(list_root, image_root)
    rows = read_rows(fmt, metadata_path, image_root, columns)
    ignored = _ignored_filters(rows, filters, fmt)
    drops = _Drops(rows, filters)
    paths = _drop_bad_paths(rows, drops, image_root)
    if rows.quilt:
        _check_filter_columns(rows, filters, metadata_path)
        _drop_by_quilt_columns(rows, filters, drops)
    drops.drop("malformed_pathology", rows.label_code == -2)
    drops.drop("no_label", rows.label_code < 0)
    label_sets = _label_sets(rows, filters)
    _drop_outside_vocabulary(rows, filters, drops, label_sets)
    _drop_missing_images(rows, paths, drops, image_root, root_listing.result())
    units = _image_units(rows, paths, drops, filters.dedupe)
    if label_sets is None:
        _drop_classes(rows.classes, units, filters, rows.n)
    else:
        _drop_label_sets(rows.classes, units, label_sets, filters, rows.n)
    near = _near_duplicates(rows, paths, units, image_root, filters, threads, image_hashes)
    _settle_rows(units, drops)
    return _Filtered(rows, paths, drops, units, near, label_sets, ignored)


def label_removed_images(
    fmt: str,
    metadata_path: str | Path | None,
    image_root: str | Path,
    filters: FilterSettings,
    columns: Mapping[str, Any] | None,
    threads: int = 1,
    image_hashes: ImageHashes | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The frames the filters removed for their label only (:data:`LABEL_REASONS`): (table, counts).

    The table has one row per such image (image_id, video, subset, removed_by: the reason of its
    first row, n_captions), sorted by image_id. An image that also has a kept row is in the
    filtered table, not here; one whose file is missing is not a frame. Rows dropped for image
    reasons (path, subset, size, ...) come first in the reason order, so they never reach here.
    ``counts`` splits the label-reason rows into those three cases (they add up)."""
    run = _apply_filters(fmt, metadata_path, image_root, filters, columns, threads, image_hashes)
    rows, reason, image_code = run.rows, run.drops.reason, run.units.image_code
    by_label = np.isin(reason, [_REASON_CODE[name] for name in LABEL_REASONS])
    exists = run.paths.exists[run.paths.of_row]
    of_kept = np.isin(image_code, image_code[reason == 0])
    candidates = np.flatnonzero(by_label & exists & ~of_kept)
    _, first, n_rows = np.unique(image_code[candidates], return_index=True, return_counts=True)
    first_rows = candidates[first]
    image_id = run.paths.norm.take(pa.array(rows.path_code[first_rows]))
    subset = pa.array(rows.subsets, type=pa.string()).take(pa.array(rows.subset_code[first_rows]))
    video, _ = _group_column(rows, first_rows, image_id, subset)
    table = pd.DataFrame(
        {
            "image_id": image_id.to_pylist(),
            "video": video.to_pylist(),
            "subset": subset.to_pylist(),
            "removed_by": [DROP_REASONS[code - 1] for code in reason[first_rows]],
            "n_captions": n_rows.astype(np.int32),
        }
    )
    counts = {
        "rows": int(by_label.sum()),
        "rows_image_missing": int((by_label & ~exists).sum()),
        "rows_of_kept_images": int((by_label & exists & of_kept).sum()),
        "rows_unlabeled": len(candidates),
    }
    assert counts["rows"] == counts["rows_image_missing"] + counts["rows_of_kept_images"] + len(candidates)
    return table.sort_values("image_id", kind="stable").reset_index(drop=True), counts


# --------------------------------------------------------------------------- output table


def _dense_rank(values: pa.Array) -> np.ndarray:
    """Rank of each string in byte order, equal strings sharing one rank (nulls last)."""
    return pc.rank(values, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64)


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative int keys; O(n) when all distinct."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    slot = np.full(int(keys.max()) + 1, -1, dtype=np.int64)
    slot[keys] = np.arange(len(keys))
    order = slot[slot >= 0]
    return order if len(order) == len(keys) else np.argsort(keys, kind="stable")


def _lookup(values: list[str], codes: np.ndarray | None, kept: np.ndarray) -> pa.Array:
    """The kept rows' values of a dictionary-coded column (null where absent or -1)."""
    if codes is None:
        return pa.nulls(len(kept), type=pa.string())
    c = codes[kept]
    return pa.array(values, type=pa.string()).take(pa.array(c, mask=c < 0))


def _group_column(rows: Rows, kept: np.ndarray, image_id: pa.Array, subset: pa.Array) -> tuple[pa.Array, int]:
    """(group, Quilt-subset images whose name has no video id): YouTube id for Quilt-subset
    images, else the configured column, else the file stem."""
    nested = has_byte(image_id, "/")  # exact here: ids come from take(), no null slots
    base = pc.replace_substring_regex(image_id, r"^.*/", "") if nested else image_id
    group = pa.nulls(len(kept), type=pa.string())
    unmatched = 0
    if rows.quilt:
        match = pc.extract_regex(base, VIDEO_ID_REGEX)  # null where the name does not match
        is_quilt = pc.fill_null(pc.equal(subset, "quilt"), False)
        use_vid = pc.and_(is_quilt, pc.is_valid(match))
        unmatched = int(pc.sum(is_quilt).as_py() or 0) - int(pc.sum(use_vid).as_py() or 0)
        if unmatched:
            log.warning("%d quilt-subset images have no video id in their name: each is its own group", unmatched)
        group = pc.if_else(use_vid, pc.struct_field(match, [0]), None)
    elif rows.group_code is not None:
        group = _lookup(rows.groups, rows.group_code, kept)
    need_stem = pc.is_null(group)
    if pc.any(need_stem).as_py():  # stems only where needed: a regex pass over few rows
        stems = pc.replace_substring_regex(base.filter(need_stem), r"\.[^./]*$", "")
        group = pc.replace_with_mask(group, need_stem, stems)
    return group, unmatched


def _build_table(
    rows: Rows,
    kept: np.ndarray,
    labels: tuple[np.ndarray, pa.Array],
    norm_paths: pa.Array,
    n_captions: np.ndarray,
    path_rank: np.ndarray,
) -> tuple[pd.DataFrame, int]:
    """Assemble the filtered table (contract columns) for the kept rows (``labels``: their first
    label's code and their label lists, in the same order), sorted by image_id
    (stable: rows of one image keep file order, for ``dedupe: false``); ``path_rank`` is
    :func:`_dense_rank` of ``norm_paths``. Also returns the count of Quilt-subset images without
    a video id in their name."""
    order = _stable_order(path_rank[rows.path_code[kept]])
    kept, n_captions = kept[order], n_captions[order]
    label_code, labels = labels[0][order], labels[1].take(pa.array(order))
    image_id = norm_paths.take(pa.array(rows.path_code[kept]))
    label = pa.array(rows.classes, type=pa.string()).take(pa.array(label_code))
    subset = pa.array(rows.subsets, type=pa.string()).take(pa.array(rows.subset_code[kept]))
    if rows.pathology_lists is not None:
        pathologies = rows.pathology_lists.take(pa.array(rows.pathology_code[kept]))
    else:
        pathologies = pa.array([[]] * len(kept), type=pa.list_(pa.string()))
    mag = rows.magnification[kept] if rows.magnification is not None else np.full(len(kept), np.nan)
    group, unmatched = _group_column(rows, kept, image_id, subset)
    arrow = pa.Table.from_arrays(
        [
            image_id,
            label,
            group,
            pathologies,
            labels,
            subset,
            _lookup(rows.splits, rows.split_code, kept),
            pa.array(mag, type=pa.float64(), from_pandas=True),
            pa.array(n_captions.astype(np.int32)),
            group,  # video: the source group, kept when near-duplicates join videos (quiltflow.data.units)
        ],
        schema=FILTERED_SCHEMA,
    )
    return arrow_to_pandas(arrow), unmatched
