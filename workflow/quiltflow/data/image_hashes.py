"""The per-image hash table: rule ``hash_images`` -> ``results/metadata/image_hashes.parquet``.

Hashing decodes every image and is most of ingest's cost (about 2 minutes for 635k small JPEGs
on 2 threads, against about 4 s for everything else). It depends only on the files, not on the
filters, so it is its own job: planned again only when the lookup, the image root or the hash
code changes; a filter change reruns ``filter_metadata`` alone, which looks its images up here.

One row per distinct image the dataset names that exists under the image root (every subset and
label: the filters have not run yet), sorted by ``image_id``:

``image_id``  the normalised path relative to the image root (the filtered table's image_id)
``size``      bytes, and ``mtime_ns``, the modification time, as seen when hashed
``status``    ``quiltflow.data.neardup`` HASH_OK / HASH_UNREADABLE / HASH_FLAT
``hashes``    the image's ``HASHES_PER_IMAGE`` 64-bit hashes (all 0 unless status is OK)

The Parquet file's metadata records ``hash_version`` (``quiltflow.data.neardup.HASH_VERSION``); a
table written by another descriptor is refused with one line, never compared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from quiltflow.core.errors import UserError
from quiltflow.data import neardup
from quiltflow.data.lookup import PATH_OK, list_files, list_root, normalize_paths, read_rows

log = logging.getLogger("quiltflow.data.image_hashes")

_VERSION_KEY = b"hash_version"


def _schema(width: int) -> pa.Schema:
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("status", pa.int8()),
            ("hashes", pa.list_(pa.uint64(), width)),
        ]
    )


@dataclass
class ImageHashes:
    """Hashes of images, by image_id (sorted)."""

    image_id: pa.Array  # string, sorted, distinct
    hashes: np.ndarray  # uint64 [n, HASHES_PER_IMAGE]
    status: np.ndarray  # int8 [n]
    version: str

    def of(self, names: Sequence[str], source: str = "the hash table") -> tuple[np.ndarray, np.ndarray]:
        """(hashes, status) of ``names``; a name the table lacks stops with one line."""
        index = pc.index_in(pa.array(names, type=pa.string()), value_set=self.image_id)
        where = index.to_numpy(zero_copy_only=False)
        if index.null_count:
            missing = names[int(np.flatnonzero(pc.is_null(index).to_numpy(zero_copy_only=False))[0])]
            raise UserError(
                f"{source} has no hash of {missing!r} ({index.null_count} kept image(s) missing): the image "
                "root changed after hashing; rerun with --forcerun hash_images"
            )
        where = where.astype(np.int64)
        return self.hashes[where], self.status[where]


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:  # vanished since listing: hashing counts it unreadable
        return -1, -1
    return info.st_size, info.st_mtime_ns


def hash_images(names: Sequence[str], image_root: str | Path, threads: int = 1) -> tuple[ImageHashes, pa.Table]:
    """Hash ``names`` (relative to ``image_root``) on ``threads`` threads: (hashes, table)."""
    names = sorted(set(names))
    paths = [Path(image_root) / name for name in names]
    hashes, status = neardup.hash_files(paths, threads)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        stats = np.array(list(pool.map(_stat, paths)), dtype=np.int64).reshape(-1, 2)
    return hash_table(names, hashes, status, stats)


def hash_table(
    names: Sequence[str], hashes: np.ndarray, status: np.ndarray, stats: np.ndarray
) -> tuple[ImageHashes, pa.Table]:
    """The table of sorted, distinct ``names`` with their hashes [n, K], status and (size, mtime_ns)."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(names), -1)
    result = ImageHashes(pa.array(names, type=pa.string()), hashes, np.asarray(status, np.int8), neardup.HASH_VERSION)
    columns = [
        result.image_id,
        pa.array(stats[:, 0]),
        pa.array(stats[:, 1]),
        pa.array(result.status),
        pa.FixedSizeListArray.from_arrays(pa.array(hashes.ravel()), hashes.shape[1]),
    ]
    table = pa.Table.from_arrays(columns, schema=_schema(hashes.shape[1]))
    return result, table.replace_schema_metadata({_VERSION_KEY: result.version.encode()})


def existing_images(
    fmt: str, metadata_path: str | Path | None, image_root: str | Path, columns: Mapping[str, Any] | None
) -> list[str]:
    """Every distinct, safe image path the dataset names that exists under ``image_root``
    (normalised, before any filter): what rule hash_images hashes."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise UserError(f"image_root {image_root} does not exist or is not a directory")
    rows = read_rows(fmt, metadata_path, image_root, columns)
    norm, verdict, _ = normalize_paths(rows.paths)
    named = np.zeros(len(norm), dtype=bool)
    named[rows.path_code[rows.path_code >= 0]] = True
    if rows.not_image_file is not None:  # folder format: files without an image extension
        named[rows.path_code[rows.not_image_file]] = False
    listing = list_files(image_root, norm, list_root(image_root))
    exists = pc.fill_null(pc.is_in(norm, value_set=listing), False).to_numpy(zero_copy_only=False)
    wanted = named & exists & (verdict == PATH_OK)
    return sorted(set(norm.filter(pa.array(wanted)).to_pylist()))


def write_image_hashes(table: pa.Table, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=False)


def read_image_hashes(path: str | Path) -> ImageHashes:
    """Read a hash table; one written by another descriptor (hash_version) is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image hash table not found")
    table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(_VERSION_KEY, b"").decode()
    if version != neardup.HASH_VERSION:
        raise UserError(
            f"{path}: hashes of descriptor {version or 'unknown'!r}, this code computes "
            f"{neardup.HASH_VERSION!r}; rerun with --forcerun hash_images"
        )
    flat = table.column("hashes").combine_chunks()
    width = flat.type.list_size
    hashes = flat.flatten().to_numpy(zero_copy_only=False).astype(np.uint64).reshape(-1, width)
    status = table.column("status").to_numpy().astype(np.int8)
    return ImageHashes(table.column("image_id").combine_chunks(), hashes, status, version)


def hash_counts(hashes: ImageHashes) -> dict[str, int]:
    """Images per hash status, for the log (they always add up to the table's rows)."""
    names = {neardup.HASH_OK: "ok", neardup.HASH_UNREADABLE: "unreadable", neardup.HASH_FLAT: "flat"}
    counts = {name: int((hashes.status == code).sum()) for code, name in names.items()}
    assert sum(counts.values()) == len(hashes.status)
    return {"images": len(hashes.status), **counts}
