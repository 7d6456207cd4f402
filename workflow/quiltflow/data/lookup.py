"""Read a dataset's rows: the Quilt-1M lookup, a generic CSV/Parquet table, or class folders.

Each reader returns the same per-row arrays (:class:`Rows`: dictionary codes into the distinct
paths, labels, subsets, ...); ``quiltflow.data.metadata`` filters those. Also here: path
normalisation (which raw paths are empty or unsafe) and the listing of the image folder.
"""

from __future__ import annotations

import ast
import csv
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from quiltflow.core.errors import UserError
from quiltflow.core.settings import schema_default
from quiltflow.data.images import IMAGE_EXTENSIONS

# Quilt-1M's pathology subspecialties: the label vocabulary of the lookup's ``pathology`` lists.
# One home: the schema default of ``filters.classes`` (where the source is cited).
SUBSPECIALTIES = tuple(schema_default("filters", "classes"))
# The one home of the video-id rule: a Quilt image of a YouTube video is named
# "<11-char id>_image_<uuid>.jpg"; never split on "_": ids may contain "_" and "-".
VIDEO_ID_REGEX = r"^(?P<vid>.{11})_image_"

# Verdict of normalize_paths per distinct raw path.
PATH_OK, PATH_EMPTY, PATH_UNSAFE = 0, 1, 2

_QUILT_OPTIONAL_COLUMNS = ("split", "magnification", "height", "width", "not_histology", "single_wsi")
_MAX_PATHOLOGY_CHARS = 4096  # literal_eval on a huge cell is slow; no real list is that long


# --------------------------------------------------------------------------- column helpers


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
    codes = np.concatenate([pc.fill_null(i, -1).to_numpy(zero_copy_only=False).astype(np.int64) for i in indices])
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


def has_byte(arr: pa.Array, chars: str) -> bool:
    """Whether any value of a string array holds one of the ASCII ``chars`` (one memory scan;
    bytes under null slots may give a harmless false positive)."""
    data, _ = _value_bytes(arr)
    return any(bool((data == ord(ch)).any()) for ch in chars) if data.size else False


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


# --------------------------------------------------------------------------- paths and files


def normalize_paths(paths: pa.Array) -> tuple[pa.Array, np.ndarray, bool]:
    """Make distinct raw paths safe: (normalised paths, null where unsafe; PATH_* verdict per
    path; whether any path changed). One regex pass; Python only for the rare odd paths."""
    verdict = np.full(len(paths), PATH_OK, dtype=np.int8)
    if not has_byte(paths, "/\\:"):
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
        return paths, verdict, False
    fixed: list[str | None] = []
    for i, raw in zip(idx.tolist(), paths.take(pa.array(idx)).to_pylist()):
        norm = posixpath.normpath(raw)
        if re.match(r"^(/|\\|[A-Za-z]:)", raw) or norm == ".." or norm.startswith("../"):
            verdict[i] = PATH_UNSAFE
            fixed.append(None)
        elif norm in (".", ""):
            verdict[i] = PATH_EMPTY
            fixed.append(None)
        else:
            fixed.append(norm)
    mask = np.zeros(len(paths), dtype=bool)
    mask[idx] = True
    return (
        pc.replace_with_mask(paths, pa.array(mask), pa.array(fixed, type=pa.string())),
        verdict,
        True,
    )


def list_root(image_root: Path) -> pa.Array:
    """Names of the files in ``image_root`` itself (one listing; the entry type comes with it,
    so no stat per file on common file systems). A folder is not an image."""
    with os.scandir(image_root) as it:
        return pa.array([e.name for e in it if e.is_file()], type=pa.string())


def list_files(image_root: Path, rel_paths: pa.Array, root: pa.Array) -> pa.Array:
    """Relative POSIX paths present under ``image_root``: ``root`` (the listing of the flat
    Quilt folder, from :func:`list_root`) plus one listing of each sub-folder the paths use."""
    listed = [root]
    nested = (
        rel_paths.filter(pc.fill_null(pc.match_substring(rel_paths, "/"), False))
        if has_byte(rel_paths, "/")
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


# --------------------------------------------------------------------------- readers


@dataclass
class Rows:
    """Per-row arrays every reader produces; ``quiltflow.data.metadata`` filters these."""

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
    # Every label of a row in its cell's order (multi-label policy): ``label_lists[label_list_code]``
    # are indices into ``classes``; None = one label per row (``label_code``).
    label_list_code: np.ndarray | None = None
    label_lists: list[tuple[int, ...]] | None = None
    group_code: np.ndarray | None = None  # configured group column (csv)
    groups: list[str] = field(default_factory=list)
    magnification: np.ndarray | None = None
    height: np.ndarray | None = None
    width: np.ndarray | None = None
    not_histology: np.ndarray | None = None
    single_wsi: np.ndarray | None = None
    columns: frozenset[str] = frozenset()  # the columns the metadata file has (quilt)
    not_image_file: np.ndarray | None = None  # bool per row: no image extension (folder)
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
        raise UserError(f"{path}: column {missing[0]!r} not found (columns: {', '.join(map(str, available))})")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path, columns=wanted)
            return table.cast(
                pa.schema([(c, pa.string() if c in string_cols else pa.float64()) for c in table.column_names])
            )
        types = {c: (pa.string() if c in string_cols else pa.float64()) for c in wanted}
        return pacsv.read_csv(
            path,
            # Captions may hold quoted newlines (tell the chunker). One thread: the quote-aware
            # chunker is serial, so extra parse threads cost more CPU than they save on 2 cores,
            # and the image folder is listed meanwhile in a background thread.
            read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types=types, strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read metadata: {first}") from None


def _label_codes(parsed: list[list[str] | None]) -> tuple[np.ndarray, list[tuple[int, ...]], list[str]]:
    """Parsed label cells -> (first-label code per cell, every label's code per cell in order
    without repeats, classes). Every entry is a class (a multi-label target may use any); one slot
    per cell plus a final one for null/empty cells: code -1, or -2 where the cell is malformed."""
    classes = sorted({name for p in parsed if p for name in p})
    index = {c: i for i, c in enumerate(classes)}
    label_lists = [tuple(dict.fromkeys(index[name] for name in p)) if p else () for p in parsed] + [()]
    first = [(-2 if p is None else index[p[0]] if p else -1) for p in parsed] + [-1]
    return np.array(first, dtype=np.int64), label_lists, classes


def quilt_rows(metadata_path: Path) -> Rows:
    """Read the Quilt lookup: only the needed columns; each distinct pathology parsed once."""
    is_parquet = metadata_path.suffix.lower() in (".parquet", ".pq")
    available = (
        pq.read_schema(metadata_path).names
        if is_parquet and metadata_path.is_file()
        else (_read_header(metadata_path) if metadata_path.is_file() else [])
    )
    optional = [c for c in _QUILT_OPTIONAL_COLUMNS if c in available]
    wanted = ["image_path", "subset", "pathology", *optional]
    table = _read_table(metadata_path, wanted, {"image_path", "subset", "pathology", "split"})
    n = table.num_rows
    path_code, paths = _encode_arrow(table["image_path"])
    subset_code, subsets = _encode(table["subset"])
    split_code, splits = _encode(table["split"]) if "split" in optional else (None, [])

    path_code_p, pathology_strings = _encode(table["pathology"])
    parsed = [parse_pathology(s) for s in pathology_strings]
    label_of, label_lists, classes = _label_codes(parsed)
    lists = pa.array([p or [] for p in parsed] + [[]], type=pa.list_(pa.string()))
    pcode = np.where(path_code_p < 0, len(parsed), path_code_p)
    col = lambda name: table[name] if name in optional else None  # noqa: E731
    return Rows(
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
        label_list_code=pcode,
        label_lists=label_lists,
        magnification=_floats(col("magnification"), n),
        height=_floats(col("height"), n),
        width=_floats(col("width"), n),
        not_histology=_floats(col("not_histology"), n),
        single_wsi=_floats(col("single_wsi"), n),
        columns=frozenset(available),
        quilt=True,
    )


def csv_rows(metadata_path: Path, columns: Mapping[str, Any]) -> Rows:
    """Generic table reader: path + label (+ group, + split) columns of a CSV or Parquet file."""
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
    cell_code, labels = _encode(table[names["label"]])
    # A cell is one label, or several written as a list literal like Quilt's: "['A', 'B']".
    parsed = [parse_pathology(s) if s.strip().startswith("[") else [s.strip()] if s.strip() else [] for s in labels]
    first, label_lists, classes = _label_codes(parsed)
    cell_code = np.where(cell_code < 0, len(labels), cell_code)
    label_code = first[cell_code]
    rows = Rows(
        n=n,
        path_code=path_code,
        paths=paths,
        label_code=label_code,
        classes=classes,
        subset_code=np.zeros(n, dtype=np.int64),
        subsets=["csv"],
        label_list_code=cell_code,
        label_lists=label_lists,
    )
    if "group" in names:
        rows.group_code, rows.groups = _encode(table[names["group"]])
    if "split" in names:
        rows.split_code, rows.splits = _encode(table[names["split"]])
    return rows


def folder_rows(image_root: Path) -> Rows:
    """One sub-folder per class; every file below it is a row (non-images counted, not read)."""
    if not image_root.is_dir():
        raise UserError(f"image_root {image_root} does not exist or is not a directory")
    paths: list[str] = []
    labels: list[int] = []
    classes = sorted(e.name for e in os.scandir(image_root) if e.is_dir() and not e.name.startswith("."))
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
        [p.lower().endswith(IMAGE_EXTENSIONS) and not posixpath.basename(p).startswith(".") for p in paths],
        dtype=bool,
    )
    return Rows(
        n=n,
        path_code=np.arange(n, dtype=np.int64),
        paths=pa.array(paths, type=pa.string()),
        label_code=np.array(labels, dtype=np.int64),
        classes=classes,
        subset_code=np.zeros(n, dtype=np.int64),
        subsets=["folder"],
        not_image_file=~ok_ext,
    )


def read_rows(fmt: str, metadata_path: str | Path | None, image_root: Path, columns: Mapping[str, Any] | None) -> Rows:
    """The rows of the dataset in format ``fmt``."""
    if fmt in ("quilt", "csv") and metadata_path is None:
        raise UserError(f"dataset.metadata: required for format {fmt!r}")
    if fmt == "quilt":
        rows = quilt_rows(Path(metadata_path))
    elif fmt == "csv":
        rows = csv_rows(Path(metadata_path), columns or {})
    elif fmt == "folder":
        rows = folder_rows(image_root)
    else:
        raise UserError(f"dataset.format={fmt!r}: expected one of quilt, csv, folder")
    if rows.n == 0:
        source = metadata_path if metadata_path is not None else image_root
        raise UserError(f"{source}: no rows to filter")
    return rows
