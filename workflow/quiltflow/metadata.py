"""Filter a dataset's metadata down to one labelled row per usable image.

Three input formats feed the same filtered table (columns in ``docs/interfaces.md``):

* ``quilt``  – the Quilt-1M lookup CSV (or a Parquet copy of it): one row per caption.
* ``csv``    – any CSV/Parquet with a path, a label and optionally a group column
  (names from ``columns = {"path": ..., "label": ..., "group": ... or None}``; an optional
  ``"split"`` entry names a column copied to ``source_split``).
* ``folder`` – one sub-folder per class under ``image_root`` (no metadata file).

Each dropped row is counted exactly once, under the FIRST reason in this order:

``empty_path``           the path cell is empty.
``unsafe_path``          absolute path, or a path that resolves outside ``image_root`` (``..``).
``not_image_file``       (folder format) a file without an image extension, or a hidden file.
``subset_excluded``      (quilt) ``subset`` not in ``filters.subsets``.
``not_histology``        (quilt) ``not_histology == 1`` and ``filters.drop_not_histology``.
``magnification``        (quilt) magnification level not in ``filters.magnifications``.
``small_image``          (quilt) ``min(height, width) < filters.min_image_side`` (unknown kept).
``malformed_pathology``  (quilt) the ``pathology`` cell is not a list of strings.
``no_label``             empty pathology list / empty label cell.
``image_missing``        no such file under ``image_root`` (one directory listing, no stat per row).
``class_excluded``       the image's label is in ``filters.exclude_classes``.
``class_too_small``      the label has fewer than ``filters.min_per_class`` images.
``class_not_top_k``      the label is not among the ``filters.top_k_classes`` largest classes.
``duplicate_row``        another caption row of an image already kept (``filters.dedupe``).

Class reasons are decided per image (label of its first surviving row) and count all of that
image's surviving rows. The report always reconciles:
``rows_in == rows_kept + sum(dropped.values())``. With ``dedupe`` (default) ``rows_kept`` equals
``images_kept`` and ``n_captions`` counts every surviving row of the image; with ``dedupe: false``
every surviving row stays in the table (``image_id`` then repeats) and class filters count rows.
"""

from __future__ import annotations

import ast
import csv
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from quiltflow.errors import UserError
from quiltflow.jsonio import write_json

log = logging.getLogger("quiltflow.metadata")

SUBSPECIALTIES = (
    "Bone",
    "Breast",
    "Cardiac",
    "Cytopathology",
    "Dermatopathology",
    "Endocrine",
    "Gastrointestinal",
    "Genitourinary",
    "Gynecologic",
    "Head and Neck",
    "Hematopathology",
    "Hepatopathology",
    "Neuropathology",
    "Ophthalmic",
    "Pediatric",
    "Pulmonary",
    "Renal",
    "Soft tissue",
)
QUILT_SUBSETS = ("quilt", "openpath", "pubmed", "laion")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
VIDEO_ID_REGEX = r"^(?P<vid>.{11})_image_"  # never split on "_": ids may contain "_" and "-"

DROP_REASONS = (
    "empty_path",
    "unsafe_path",
    "not_image_file",
    "subset_excluded",
    "not_histology",
    "magnification",
    "small_image",
    "malformed_pathology",
    "no_label",
    "image_missing",
    "class_excluded",
    "class_too_small",
    "class_not_top_k",
    "duplicate_row",
)
_REASON_CODE = {name: i + 1 for i, name in enumerate(DROP_REASONS)}  # 0 = kept

DEFAULT_FILTERS: dict[str, Any] = {
    "subsets": list(QUILT_SUBSETS),
    "drop_not_histology": True,
    "magnifications": None,
    "min_image_side": 0,
    "dedupe": True,
    "label_policy": "primary",
    "min_per_class": 1,
    "top_k_classes": None,
    "exclude_classes": [],
}
_QUILT_ONLY_FILTERS = ("subsets", "drop_not_histology", "magnifications", "min_image_side")
LABEL_POLICIES = ("primary",)

FILTERED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.string()),
        ("group", pa.string()),
        ("pathologies", pa.list_(pa.string())),
        ("subset", pa.string()),
        ("source_split", pa.string()),
        ("magnification", pa.float64()),
        ("n_captions", pa.int32()),
    ]
)

_MAX_PATHOLOGY_CHARS = 4096  # literal_eval on a huge cell is slow; no real list is that long


# --------------------------------------------------------------------------- small helpers


def _encode_arrow(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode a string column: (int64 codes, -1 for null/empty; distinct values)."""
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())
    # A chunked column is encoded chunk by chunk against one shared, final dictionary: no copy
    # of the strings into one array first.
    enc = col.dictionary_encode()
    if isinstance(enc, pa.ChunkedArray):
        chunks = enc.chunks
        if not chunks:
            return np.zeros(0, dtype=np.int64), pa.array([], type=pa.string())
        dictionary = chunks[-1].dictionary
        indices = [c.indices for c in chunks]
    else:
        dictionary, indices = enc.dictionary, [enc.indices]
    codes = np.concatenate(
        [pc.fill_null(i, -1).to_numpy(zero_copy_only=False).astype(np.int64) for i in indices]
    )
    empty = np.flatnonzero(pc.equal(dictionary, "").to_numpy(zero_copy_only=False))
    if len(empty):
        codes[np.isin(codes, empty)] = -1
    return codes, dictionary


def _value_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 bytes of all values, int64 offsets relative to them) of a string array."""
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    offsets = offsets.astype(np.int64)
    data = (
        np.frombuffer(bufs[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        if bufs[2] is not None and len(arr)
        else np.zeros(0, dtype=np.uint8)
    )
    return data, offsets - offsets[0]


def _has_byte(arr: pa.Array, chars: str) -> bool:
    """Whether any value of a string array holds one of the ASCII ``chars`` (one memory scan;
    bytes under null slots may give a harmless false positive)."""
    data, _ = _value_bytes(arr)
    return any(bool((data == ord(ch)).any()) for ch in chars) if data.size else False


# Arrow kernels and directory reads release the GIL: the root listing and the id ranking run
# here while the main thread parses and filters. Idle threads cost nothing; none start until used.
_BACKGROUND = ThreadPoolExecutor(max_workers=2, thread_name_prefix="quiltflow-metadata")


def _encode(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Like ``_encode_arrow`` with the (few) distinct values as a Python list."""
    codes, values = _encode_arrow(col)
    return codes, values.to_pylist()


def _floats(col: pa.Array | pa.ChunkedArray | None, n: int) -> np.ndarray:
    """A numeric column as float64 with NaN for missing (all NaN when the column is absent)."""
    if col is None:
        return np.full(n, np.nan)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def parse_pathology(text: str | None) -> list[str] | None:
    """Parse one ``pathology`` cell: a list of names, ``[]`` when empty, None when malformed."""
    if text is None:
        return []
    text = text.strip()
    if text in ("", "[]", "nan", "NaN", "None"):
        return []
    if len(text) > _MAX_PATHOLOGY_CHARS:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    return [v.strip() for v in value if v.strip()]


def video_id(file_name: str) -> str | None:
    """YouTube id of a Quilt image file name (``<11 chars>_image_<uuid>.jpg``), else None."""
    m = re.match(VIDEO_ID_REGEX, posixpath.basename(file_name))
    return m.group("vid") if m else None


def _normalize_paths(paths: pa.Array) -> tuple[pa.Array, np.ndarray, bool]:
    """Make distinct raw paths safe: (normalised paths, null where unsafe; reason per path
    (0 = ok); whether any path changed). One regex pass; Python only for the rare odd paths."""
    reason = np.zeros(len(paths), dtype=np.int8)
    if not _has_byte(paths, "/\\:"):
        # No separator, backslash or drive colon anywhere (flat Quilt names): only a whole
        # "." or ".." can be odd, and those are at most two bytes long.
        _, offsets = _value_bytes(paths)
        idx = np.flatnonzero(np.diff(offsets) <= 2)
        if len(idx):
            short = paths.take(pa.array(idx)).to_pylist()
            idx = idx[np.array([v in (".", "..") for v in short], dtype=bool)]
    else:
        odd = pc.match_substring_regex(paths, r"^(/|\\|[A-Za-z]:)|(^|/)\.{1,2}(/|$)|//|/$")
        idx = np.flatnonzero(pc.fill_null(odd, False).to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return paths, reason, False
    fixed: list[str | None] = []
    for i, raw in zip(idx.tolist(), paths.take(pa.array(idx)).to_pylist()):
        norm = posixpath.normpath(raw)
        if re.match(r"^(/|\\|[A-Za-z]:)", raw) or norm == ".." or norm.startswith("../"):
            reason[i] = _REASON_CODE["unsafe_path"]
            fixed.append(None)
        elif norm in (".", ""):
            reason[i] = _REASON_CODE["empty_path"]
            fixed.append(None)
        else:
            fixed.append(norm)
    mask = np.zeros(len(paths), dtype=bool)
    mask[idx] = True
    return (
        pc.replace_with_mask(paths, pa.array(mask), pa.array(fixed, type=pa.string())),
        reason,
        True,
    )


def _list_root(image_root: Path) -> pa.Array:
    """Names of the files in ``image_root`` itself (one listing; the entry type comes with it,
    so no stat per file on common file systems). A folder is not an image."""
    with os.scandir(image_root) as it:
        return pa.array([e.name for e in it if e.is_file()], type=pa.string())


def _list_files(image_root: Path, rel_paths: pa.Array, root: pa.Array) -> pa.Array:
    """Relative POSIX paths present under ``image_root``: ``root`` (the listing of the flat
    Quilt folder, from :func:`_list_root`) plus one listing of each sub-folder the paths use."""
    listed = [root]
    nested = (
        rel_paths.filter(pc.fill_null(pc.match_substring(rel_paths, "/"), False))
        if _has_byte(rel_paths, "/")
        else rel_paths[:0]
    )
    if len(nested):
        for parent in pc.unique(pc.replace_substring_regex(nested, r"/[^/]*$", "")).to_pylist():
            try:
                with os.scandir(image_root / parent) as it:
                    names = [f"{parent}/{e.name}" for e in it if e.is_file()]
            except (FileNotFoundError, NotADirectoryError):
                continue
            listed.append(pa.array(names, type=pa.string()))
    return pa.concat_arrays(listed)


# --------------------------------------------------------------------------- filter config


def _check_filters(filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge user filters over the defaults and validate every key (UserError names the key)."""
    filters = dict(filters or {})
    unknown = sorted(set(filters) - set(DEFAULT_FILTERS))
    if unknown:
        raise UserError(f"filters.{unknown[0]}: unknown key (known: {', '.join(DEFAULT_FILTERS)})")
    f = {**DEFAULT_FILTERS, **{k: v for k, v in filters.items()}}
    for key in ("subsets", "exclude_classes"):
        if f[key] is None:
            f[key] = list(DEFAULT_FILTERS[key])
        if isinstance(f[key], str) or not all(isinstance(s, str) for s in f[key]):
            raise UserError(f"filters.{key}={f[key]!r}: expected a list of names")
        f[key] = list(f[key])
    if f["magnifications"] is not None:
        mags = f["magnifications"]
        if isinstance(mags, (str, int, float)) or not all(
            m is None
            or (isinstance(m, (int, float)) and not isinstance(m, bool) and m in (0, 1, 2))
            for m in mags
        ):
            raise UserError(
                f"filters.magnifications={mags!r}: expected null or a list of 0, 1, 2, null"
            )
        f["magnifications"] = list(mags)
    for key, lo in (("min_image_side", 0), ("min_per_class", 1)):
        v = f[key]
        if v is None:
            f[key] = DEFAULT_FILTERS[key]
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
            raise UserError(f"filters.{key}={v!r}: expected a number >= {lo}")
    k = f["top_k_classes"]
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise UserError(f"filters.top_k_classes={k!r}: expected null or an integer >= 1")
    for key in ("drop_not_histology", "dedupe"):
        if not isinstance(f[key], bool):
            raise UserError(f"filters.{key}={f[key]!r}: expected true or false")
    if f["label_policy"] not in LABEL_POLICIES:
        raise UserError(
            f"filters.label_policy={f['label_policy']!r}: expected one of {list(LABEL_POLICIES)}"
        )
    return f


# --------------------------------------------------------------------------- adapters


@dataclass
class _Rows:
    """Per-row arrays every adapter produces; the common pipeline filters these."""

    n: int
    path_code: np.ndarray  # int64 index into ``paths`` (-1 = empty)
    paths: pa.Array  # distinct raw paths
    label_code: np.ndarray  # int64 index into ``classes``; -1 no label, -2 malformed
    classes: list[str]
    subset_code: np.ndarray  # int64 index into ``subsets``
    subsets: list[str]
    split_code: np.ndarray | None = None  # int64 index into ``splits`` (-1 = missing)
    splits: list[str] = field(default_factory=list)
    pathology_code: np.ndarray | None = None  # int64 index into ``pathology_lists``
    pathology_lists: pa.Array | None = None
    group_code: np.ndarray | None = None  # configured group column (csv)
    groups: list[str] = field(default_factory=list)
    magnification: np.ndarray | None = None
    height: np.ndarray | None = None
    width: np.ndarray | None = None
    not_histology: np.ndarray | None = None
    pre_reason: np.ndarray | None = None  # int8 reason decided by the adapter (folder)
    quilt: bool = False


def _read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise UserError(f"{path}: metadata file is empty") from None


def _read_table(path: Path, wanted: list[str], string_cols: set[str]) -> pa.Table:
    """Read only ``wanted`` columns of a CSV or Parquet file (strings kept as strings)."""
    if not path.is_file():
        raise UserError(f"metadata file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        available = pq.read_schema(path).names
    else:
        available = _read_header(path)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise UserError(
            f"{path}: column {missing[0]!r} not found (columns: {', '.join(map(str, available))})"
        )
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path, columns=wanted)
            return table.cast(
                pa.schema(
                    [
                        (c, pa.string() if c in string_cols else pa.float64())
                        for c in table.column_names
                    ]
                )
            )
        types = {c: (pa.string() if c in string_cols else pa.float64()) for c in wanted}
        return pacsv.read_csv(
            path,
            # Captions may hold quoted newlines (tell the chunker). One thread: the quote-aware
            # chunker is serial, so extra parse threads cost more CPU than they save on 2 cores,
            # and the image folder is listed meanwhile in a background thread.
            read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted, column_types=types, strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read metadata: {first}") from None


def _quilt_rows(metadata_path: Path) -> _Rows:
    """Read the Quilt lookup: only the needed columns; each distinct pathology parsed once."""
    is_parquet = metadata_path.suffix.lower() in (".parquet", ".pq")
    available = (
        pq.read_schema(metadata_path).names
        if is_parquet and metadata_path.is_file()
        else (_read_header(metadata_path) if metadata_path.is_file() else [])
    )
    optional = [
        c for c in ("split", "magnification", "height", "width", "not_histology") if c in available
    ]
    wanted = ["image_path", "subset", "pathology", *optional]
    table = _read_table(metadata_path, wanted, {"image_path", "subset", "pathology", "split"})
    n = table.num_rows
    path_code, paths = _encode_arrow(table["image_path"])
    subset_code, subsets = _encode(table["subset"])
    split_code, splits = _encode(table["split"]) if "split" in optional else (None, [])

    path_code_p, pathology_strings = _encode(table["pathology"])
    parsed = [parse_pathology(s) for s in pathology_strings]
    classes = sorted({p[0] for p in parsed if p})
    class_index = {c: i for i, c in enumerate(classes)}
    # One slot per distinct string plus a final slot for null/empty cells (code -1).
    label_of = np.array(
        [(-2 if p is None else class_index[p[0]] if p else -1) for p in parsed] + [-1],
        dtype=np.int64,
    )
    lists = pa.array([p or [] for p in parsed] + [[]], type=pa.list_(pa.string()))
    pcode = np.where(path_code_p < 0, len(parsed), path_code_p)
    col = lambda name: table[name] if name in optional else None  # noqa: E731
    return _Rows(
        n=n,
        path_code=path_code,
        paths=paths,
        label_code=label_of[pcode],
        classes=classes,
        subset_code=subset_code,
        subsets=subsets,
        split_code=split_code,
        splits=splits,
        pathology_code=pcode,
        pathology_lists=lists,
        magnification=_floats(col("magnification"), n),
        height=_floats(col("height"), n),
        width=_floats(col("width"), n),
        not_histology=_floats(col("not_histology"), n),
        quilt=True,
    )


def _csv_rows(metadata_path: Path, columns: Mapping[str, Any]) -> _Rows:
    """Generic table adapter: path + label (+ group, + split) columns of a CSV or Parquet file."""
    columns = dict(columns or {})
    for key in ("path", "label"):
        if not columns.get(key):
            raise UserError(f"columns.{key}: required for format 'csv' (name of the {key} column)")
    unknown = sorted(set(columns) - {"path", "label", "group", "split"})
    if unknown:
        raise UserError(f"columns.{unknown[0]}: unknown key (known: path, label, group, split)")
    names = {k: columns[k] for k in ("path", "label", "group", "split") if columns.get(k)}
    wanted = list(dict.fromkeys(names.values()))
    table = _read_table(metadata_path, wanted, set(wanted))
    n = table.num_rows
    path_code, paths = _encode_arrow(table[names["path"]])
    label_code, labels = _encode(table[names["label"]])
    labels = [s.strip() for s in labels]
    classes = sorted(set(labels) - {""})
    index = {c: i for i, c in enumerate(classes)}
    remap = np.array([index[s] if s else -1 for s in labels] + [-1], dtype=np.int64)
    label_code = remap[np.where(label_code < 0, len(labels), label_code)]
    rows = _Rows(
        n=n,
        path_code=path_code,
        paths=paths,
        label_code=label_code,
        classes=classes,
        subset_code=np.zeros(n, dtype=np.int64),
        subsets=["csv"],
    )
    if "group" in names:
        rows.group_code, rows.groups = _encode(table[names["group"]])
    if "split" in names:
        rows.split_code, rows.splits = _encode(table[names["split"]])
    return rows


def _folder_rows(image_root: Path) -> _Rows:
    """One sub-folder per class; every file below it is a row (non-images counted, not read)."""
    if not image_root.is_dir():
        raise UserError(f"image_root {image_root} does not exist or is not a directory")
    paths: list[str] = []
    labels: list[int] = []
    classes = sorted(
        e.name for e in os.scandir(image_root) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise UserError(f"image_root {image_root} has no class sub-folders (format 'folder')")
    for ci, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(image_root / cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(image_root).as_posix()
            for name in sorted(filenames):
                paths.append(f"{rel}/{name}")
                labels.append(ci)
    n = len(paths)
    ok_ext = np.array(
        [
            p.lower().endswith(IMAGE_EXTENSIONS) and not posixpath.basename(p).startswith(".")
            for p in paths
        ],
        dtype=bool,
    )
    pre = np.where(ok_ext, 0, _REASON_CODE["not_image_file"]).astype(np.int8)
    return _Rows(
        n=n,
        path_code=np.arange(n, dtype=np.int64),
        paths=pa.array(paths, type=pa.string()),
        label_code=np.array(labels, dtype=np.int64),
        classes=classes,
        subset_code=np.zeros(n, dtype=np.int64),
        subsets=["folder"],
        pre_reason=pre,
    )


# --------------------------------------------------------------------------- common pipeline


def _empty_error(stage: str, f: Mapping[str, Any], rows_in: int, detail: str = "") -> UserError:
    """One-line message naming the filter (or check) that left nothing."""
    if stage in ("subset_excluded", "not_histology", "magnification", "small_image"):
        key = {
            "subset_excluded": "subsets",
            "not_histology": "drop_not_histology",
            "magnification": "magnifications",
            "small_image": "min_image_side",
        }[stage]
        return UserError(f"filters.{key}={f[key]!r} left no rows ({rows_in} rows in)")
    if stage == "class_excluded":
        return UserError(f"filters.exclude_classes={f['exclude_classes']!r} excluded every class")
    if stage == "class_too_small":
        return UserError(
            f"filters.min_per_class={f['min_per_class']} left no class with enough images {detail}"
        )
    if stage == "image_missing":
        return UserError(f"no usable row points to an existing file under image_root {detail}")
    if stage == "not_image_file":
        return UserError(
            f"no file with an image extension {IMAGE_EXTENSIONS} in the class folders {detail}"
        )
    return UserError(
        f"every remaining row was dropped as {stage!r} ({rows_in} rows in; see the module "
        "docstring of quiltflow.metadata for the reasons)"
    )


def filter_metadata(
    fmt: str,
    metadata_path: str | Path | None,
    image_root: str | Path,
    filters: Mapping[str, Any] | None,
    columns: Mapping[str, Any] | None,
) -> tuple[pd.DataFrame, dict]:
    """Filter ``metadata_path`` (format ``fmt``) against ``image_root``: (table, report)."""
    f = _check_filters(filters)
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise UserError(f"image_root {image_root} does not exist or is not a directory")
    # The root listing (a flat Quilt folder: ~10^6 names) is read while the metadata parses.
    root_listing = _BACKGROUND.submit(_list_root, image_root)
    if fmt == "quilt":
        if metadata_path is None:
            raise UserError("dataset.metadata: required for format 'quilt'")
        rows = _quilt_rows(Path(metadata_path))
    elif fmt == "csv":
        if metadata_path is None:
            raise UserError("dataset.metadata: required for format 'csv'")
        rows = _csv_rows(Path(metadata_path), columns or {})
    elif fmt == "folder":
        rows = _folder_rows(image_root)
    else:
        raise UserError(f"dataset.format={fmt!r}: expected one of quilt, csv, folder")
    source = metadata_path if metadata_path is not None else image_root
    if rows.n == 0:
        raise UserError(f"{source}: no rows to filter")
    ignored = [k for k in _QUILT_ONLY_FILTERS if not rows.quilt and f[k] != DEFAULT_FILTERS[k]]
    if ignored:
        log.warning("format %s has no %s columns: filters %s ignored", fmt, "Quilt", ignored)

    n = rows.n
    reason = np.zeros(n, dtype=np.int8) if rows.pre_reason is None else rows.pre_reason.copy()
    detail = ""  # extra words for the "nothing left" error of the current stage

    def drop(name: str, mask: np.ndarray) -> None:
        """Give reason ``name`` to rows still alive where ``mask``; fail if nothing survives."""
        reason[(reason == 0) & mask] = _REASON_CODE[name]
        if not (reason == 0).any():
            raise _empty_error(name, f, n, detail)

    # Path safety on the distinct paths, mapped back with the codes.
    n_paths = len(rows.paths)
    norm_paths, path_reason, changed = _normalize_paths(rows.paths)
    # Sort order of the image ids (for the output table), ranked while the filters run.
    path_rank = _BACKGROUND.submit(_dense_rank, norm_paths)
    safe_code = np.concatenate([path_reason, [_REASON_CODE["empty_path"]]])
    pcode = np.where(rows.path_code < 0, n_paths, rows.path_code)  # n_paths = "no path" slot
    if rows.pre_reason is not None and not (reason == 0).any():
        raise _empty_error("not_image_file", f, n, f"under {image_root}")
    drop("empty_path", safe_code[pcode] == _REASON_CODE["empty_path"])
    drop("unsafe_path", safe_code[pcode] == _REASON_CODE["unsafe_path"])

    if rows.quilt:
        keep_subset = np.array([s in f["subsets"] for s in rows.subsets] + [False])
        drop(
            "subset_excluded",
            ~keep_subset[np.where(rows.subset_code < 0, len(rows.subsets), rows.subset_code)],
        )
        if f["drop_not_histology"]:
            drop("not_histology", rows.not_histology == 1)
        if f["magnifications"] is not None:
            levels = [float(m) for m in f["magnifications"] if m is not None]
            keep = np.isin(rows.magnification, levels)
            if None in f["magnifications"]:
                keep |= np.isnan(rows.magnification)
            drop("magnification", ~keep)
        if f["min_image_side"] > 0:
            with np.errstate(invalid="ignore"):
                side = np.fmin(rows.height, rows.width)
            drop("small_image", side < f["min_image_side"])
        drop("malformed_pathology", rows.label_code == -2)
    drop("no_label", rows.label_code < 0)

    # Existence: one listing per folder used, then one hashed set-membership pass.
    listing = _list_files(image_root, norm_paths, root_listing.result())
    exists = pc.fill_null(pc.is_in(norm_paths, value_set=listing), False).to_numpy(
        zero_copy_only=False
    )
    exists = np.concatenate([exists, [False]])
    first_alive = np.flatnonzero(reason == 0)[:1]
    example = norm_paths[int(rows.path_code[first_alive[0]])].as_py() if len(first_alive) else ""
    detail = f"{image_root} (e.g. {example!r} is not there; {len(listing)} entries listed)"
    drop("image_missing", ~exists[pcode])

    # Images: normalisation may map several raw paths onto one image id.
    if changed:
        img_of_path = pc.fill_null(norm_paths.dictionary_encode().indices, -1).to_numpy(
            zero_copy_only=False
        )
        img_code = np.append(img_of_path.astype(np.int64), -1)[pcode]
    else:
        img_code = rows.path_code

    alive = np.flatnonzero(reason == 0)
    codes_alive = img_code[alive]
    count_of_img = np.bincount(codes_alive, minlength=n_paths)
    if f["dedupe"]:
        # First surviving row of each image, without sorting: O(rows).
        first_of_img = np.full(n_paths, len(alive), dtype=np.int64)
        np.minimum.at(first_of_img, codes_alive, np.arange(len(alive)))
        present = count_of_img > 0
        first_pos = first_of_img[present]
        unit_rows = alive[first_pos]
        counts = count_of_img[present]
        unit_of_alive = (np.cumsum(present) - 1)[codes_alive]
    else:
        unit_rows = alive
        first_pos = np.arange(len(alive))
        unit_of_alive = np.arange(len(alive))
        counts = count_of_img[codes_alive]
    unit_label = rows.label_code[unit_rows]
    unit_reason = np.zeros(len(unit_rows), dtype=np.int8)

    # Class-level filters, on images (or rows without dedupe).
    if f["exclude_classes"]:
        excluded = np.array([c in f["exclude_classes"] for c in rows.classes], dtype=bool)
        unit_reason[excluded[unit_label]] = _REASON_CODE["class_excluded"]
        if not (unit_reason == 0).any():
            raise _empty_error("class_excluded", f, n)
    sizes = np.bincount(unit_label[unit_reason == 0], minlength=len(rows.classes))
    if f["min_per_class"] > 1:
        small = sizes < f["min_per_class"]
        unit_reason[(unit_reason == 0) & small[unit_label]] = _REASON_CODE["class_too_small"]
        if not (unit_reason == 0).any():
            raise _empty_error("class_too_small", f, n, f"(largest class has {int(sizes.max())})")
        sizes = np.where(small, 0, sizes)
    if f["top_k_classes"] is not None:
        ranked = sorted(
            (c for c in range(len(rows.classes)) if sizes[c] > 0),
            key=lambda c: (-sizes[c], rows.classes[c]),
        )
        top = np.zeros(len(rows.classes), dtype=bool)
        top[ranked[: f["top_k_classes"]]] = True
        unit_reason[(unit_reason == 0) & ~top[unit_label]] = _REASON_CODE["class_not_top_k"]

    # Map unit decisions back onto every surviving row; extra caption rows are duplicates.
    row_reason = unit_reason[unit_of_alive]
    is_first = np.zeros(len(alive), dtype=bool)
    is_first[first_pos] = True
    row_reason[(row_reason == 0) & ~is_first] = _REASON_CODE["duplicate_row"]
    reason[alive] = row_reason

    keep_units = unit_reason == 0
    kept_rows = unit_rows[keep_units]
    table = _build_table(rows, kept_rows, norm_paths, counts[keep_units], path_rank.result())
    dropped_counts = np.bincount(reason, minlength=len(DROP_REASONS) + 1)
    kept_sizes = np.bincount(unit_label[keep_units], minlength=len(rows.classes))
    report = {
        "format": fmt,
        "rows_in": int(n),
        "distinct_images_in": int(n_paths),
        "rows_kept": int(dropped_counts[0]),
        "images_kept": int(len(kept_rows) if f["dedupe"] else len(np.unique(img_code[kept_rows]))),
        "dropped": {
            name: int(dropped_counts[code])
            for name, code in _REASON_CODE.items()
            if dropped_counts[code]
        },
        "class_counts": {rows.classes[c]: int(k) for c, k in enumerate(kept_sizes) if k},
        "filters": f,
    }
    if ignored:
        report["ignored_filters"] = ignored
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    log.info(
        "kept %d images (%d rows) of %d rows; dropped %s",
        report["images_kept"],
        report["rows_kept"],
        n,
        report["dropped"],
    )
    return table, report


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


def _build_table(
    rows: _Rows,
    kept: np.ndarray,
    norm_paths: pa.Array,
    n_captions: np.ndarray,
    path_rank: np.ndarray,
) -> pd.DataFrame:
    """Assemble the filtered table (contract columns) for the kept rows, sorted by image_id
    (stable: rows of one image keep file order, for ``dedupe: false``); ``path_rank`` is
    :func:`_dense_rank` of ``norm_paths``."""
    order = _stable_order(path_rank[rows.path_code[kept]])
    kept, n_captions = kept[order], n_captions[order]
    image_id = norm_paths.take(pa.array(rows.path_code[kept]))
    label = pa.array(rows.classes, type=pa.string()).take(pa.array(rows.label_code[kept]))
    subset = pa.array(rows.subsets, type=pa.string()).take(pa.array(rows.subset_code[kept]))

    def lookup(values: list[str], codes: np.ndarray | None) -> pa.Array:
        if codes is None:
            return pa.nulls(len(kept), type=pa.string())
        c = codes[kept]
        return pa.array(values, type=pa.string()).take(pa.array(c, mask=c < 0))

    # Group: YouTube id for Quilt-subset images, else the configured column, else the file stem.
    nested = _has_byte(image_id, "/")  # exact here: ids come from take(), no null slots
    base = pc.replace_substring_regex(image_id, r"^.*/", "") if nested else image_id
    group = pa.nulls(len(kept), type=pa.string())
    if rows.quilt:
        match = pc.extract_regex(base, VIDEO_ID_REGEX)  # null where the name does not match
        use_vid = pc.and_(pc.fill_null(pc.equal(subset, "quilt"), False), pc.is_valid(match))
        group = pc.if_else(use_vid, pc.struct_field(match, [0]), None)
    elif rows.group_code is not None:
        group = lookup(rows.groups, rows.group_code)
    need_stem = pc.is_null(group)
    if pc.any(need_stem).as_py():  # stems only where needed: a regex pass over few rows
        stems = pc.replace_substring_regex(base.filter(need_stem), r"\.[^./]*$", "")
        group = pc.replace_with_mask(group, need_stem, stems)
    if rows.pathology_lists is not None:
        pathologies = rows.pathology_lists.take(pa.array(rows.pathology_code[kept]))
    else:
        pathologies = pa.array([[]] * len(kept), type=pa.list_(pa.string()))
    mag = rows.magnification[kept] if rows.magnification is not None else np.full(len(kept), np.nan)
    arrow = pa.Table.from_arrays(
        [
            image_id,
            label,
            group,
            pathologies,
            subset,
            lookup(rows.splits, rows.split_code),
            pa.array(mag, type=pa.float64(), from_pandas=True),
            pa.array(n_captions.astype(np.int32)),
        ],
        schema=FILTERED_SCHEMA,
    )
    return arrow_to_pandas(arrow)


# --------------------------------------------------------------------------- file I/O


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
    low_card = [c for c in ("label", "group", "subset", "source_split") if c in schema.names]
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=low_card)


def write_filtered(
    table: pd.DataFrame, report: dict, table_path: str | Path, report_path: str | Path
) -> None:
    """Write the filtered table (Parquet) and its report (JSON)."""
    write_parquet_stable(table, table_path, FILTERED_SCHEMA)
    write_json(report, report_path, sort_keys=True)  # stable bytes for stable content


def read_filtered(path: str | Path) -> pd.DataFrame:
    """Read a filtered table (or split manifest) written by this package."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: filtered table not found")
    return arrow_to_pandas(pq.read_table(path))
