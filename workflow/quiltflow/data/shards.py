"""Split manifests -> TFRecord shards of resized JPEGs (one shard job's work).

Sharding workers use PIL only (no TensorFlow: ~50 MB per worker instead of ~630 MB); images are
prepared by ``quiltflow.data.images``, the index is ``quiltflow.records.shard_index``, the shard
geometry ``quiltflow.dag.shard_plan``. pyarrow is imported where a manifest is read.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import write_json
from quiltflow.dag.shard_plan import shard_bounds
from quiltflow.data.images import BadImage, prepare_views
from quiltflow.records.tables import UNLABELED_INDEX
from quiltflow.records.tfrecord_io import TFRecordWriter, encode_example

if TYPE_CHECKING:  # settings imports jsonschema and the schema; the DAG build needs neither
    from quiltflow.core.settings import ShardSettings

log = logging.getLogger(__name__)


MANIFEST_COLUMNS = ("image_id", "label_index", "group")
# Every target label of a row (multi-label); a manifest without it has one label per row.
TARGETS_COLUMN = "label_indices"


# ------------------------------------------------------------------------------ one shard


def _read_manifest_rows(
    manifest_path: Path, num_shards: int, shard_index: int
) -> tuple[int, int, int, dict[str, list]]:
    """(total rows, start, stop, columns) of one shard. The three small columns of the whole
    manifest are read and sliced: milliseconds, next to seconds of image work per shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(manifest_path)
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"{manifest_path}: cannot read Parquet manifest ({e})") from None
    names = set(pf.schema_arrow.names)
    for col in MANIFEST_COLUMNS:
        if col not in names:
            raise UserError(f"{manifest_path}: manifest has no column {col!r}")
    total = pf.metadata.num_rows
    start, stop = shard_bounds(total, num_shards, shard_index)
    wanted = [*MANIFEST_COLUMNS, TARGETS_COLUMN] if TARGETS_COLUMN in names else list(MANIFEST_COLUMNS)
    table = pf.read(columns=wanted).slice(start, stop - start)
    columns = {c: table.column(c).to_pylist() for c in wanted}
    columns.setdefault(TARGETS_COLUMN, [[label] for label in columns["label_index"]])
    return total, start, stop, columns


@dataclass
class _ShardRows:
    """The manifest rows of one shard: ``[start, stop)`` of ``total``, and their columns."""

    manifest_path: Path
    total: int
    start: int
    stop: int
    columns: dict[str, list]


def _write_records(
    f: BinaryIO, rows: _ShardRows, image_root: Path, settings: ShardSettings
) -> tuple[TFRecordWriter, list[dict[str, str]]]:
    """Write one record per usable image of ``rows`` to ``f``: (writer, skipped images)."""
    writer = TFRecordWriter(f)
    skipped: list[dict[str, str]] = []
    columns = rows.columns
    for offset, (image_id, label, labels, group) in enumerate(
        zip(columns["image_id"], columns["label_index"], columns[TARGETS_COLUMN], columns["group"])
    ):
        if image_id is None or not _valid_label(label, labels):
            raise UserError(
                f"{rows.manifest_path}: row {rows.start + offset} has a missing image_id or invalid label_index"
            )
        try:
            views = prepare_views(
                image_root / image_id,
                settings.image_size,
                settings.jpeg_quality,
                framing=settings.framing,
                grid_size=settings.grid_size,
            )
        except BadImage as e:
            skipped.append({"image_id": image_id, "reason": e.reason, "detail": e.detail})
            continue
        for example in _examples(views, image_id, int(label), labels, group):
            writer.write(encode_example(example))
    return writer, skipped


def _valid_label(label: int | None, labels: list[int]) -> bool:
    """A label index with its targets, or UNLABELED_INDEX with none (an unlabeled frame)."""
    if label is not None and int(label) == UNLABELED_INDEX and not labels:
        return True
    return label is not None and int(label) >= 0 and bool(labels) and min(labels) >= 0


def _examples(views: list[bytes], image_id: str, label: int, labels: list[int], group: str | None) -> list[dict]:
    """One record per view; grid cells get their own id and carry the source image's id.
    ``image/label`` is the first label (the stratum), ``image/labels`` every target label."""
    common = {"image/label": label, "image/labels": [int(x) for x in labels], "image/group": group or ""}
    if not labels:  # an unlabeled frame: a feature cannot be an empty list, and readers default it
        del common["image/labels"]
    if len(views) == 1:
        return [{"image/encoded": views[0], "image/id": image_id, **common}]
    return [
        {"image/encoded": view, "image/id": f"{image_id}#cell{k}", "image/source": image_id, **common}
        for k, view in enumerate(views)
    ]


def _write_atomically(
    out_path: Path, rows: _ShardRows, image_root: Path, settings: ShardSettings
) -> tuple[TFRecordWriter, list[dict[str, str]]]:
    """:func:`_write_records` into a temporary file beside ``out_path``, renamed only once
    complete, so an interrupted job never leaves a file under the final name."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            result = _write_records(f, rows, image_root, settings)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return result


def _shard_report(
    shard_index: int,
    num_shards: int,
    out_path: Path,
    rows: _ShardRows,
    writer: TFRecordWriter,
    skipped: list[dict[str, str]],
    settings: ShardSettings,
) -> dict:
    """The shard's report: rows, kept records, skips by reason, bytes and SHA-256."""
    n_rows = rows.stop - rows.start
    report = {
        "shard": int(shard_index),
        "num_shards": int(num_shards),
        "file": out_path.name,
        "row_range": [rows.start, rows.stop],
        "rows": n_rows,
        "kept": writer.records,
        "skipped": skipped,
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "bytes": writer.bytes_written,
        "sha256": writer.sha256,
        "empty": writer.records == 0,  # true when every row was skipped (or there were none)
        "image_size": settings.image_size,
        "jpeg_quality": settings.jpeg_quality,
        "framing": settings.framing,
        "records_per_image": settings.records_per_image,
    }
    # kept counts images; a grid image is several records.
    report["kept"], report["records"] = writer.records // settings.records_per_image, writer.records
    assert report["kept"] + len(skipped) == n_rows, "shard counts do not reconcile"
    return report


def _log_shard(report: dict, seconds: float, out_path: Path) -> None:
    shard, num_shards, n_rows, kept = (
        report["shard"],
        report["num_shards"],
        report["rows"],
        report["kept"],
    )
    rate = n_rows / seconds if seconds > 0 else float("nan")
    log.info(
        "shard %d/%d: kept %d of %d rows, skipped %s; %d bytes in %.1f s (%.0f images/s)",
        shard,
        num_shards,
        kept,
        n_rows,
        report["skipped_by_reason"] or "none",
        report["bytes"],
        seconds,
        rate,
    )
    if n_rows and not kept:
        log.warning(
            "shard %d/%d: every one of its %d images was skipped; wrote an empty shard %s",
            shard,
            num_shards,
            n_rows,
            out_path,
        )


def write_shard(
    manifest_path: str | os.PathLike,
    image_root: str | os.PathLike,
    shard_index: int,
    num_shards: int,
    settings: ShardSettings,
    out_path: str | os.PathLike,
    report_path: str | os.PathLike,
) -> dict:
    """Write shard ``shard_index`` of ``num_shards`` of a split manifest; return its report.

    Records go to a temporary file beside ``out_path`` that is renamed only once complete, so
    an interrupted job never leaves a file under the final name. Unusable images are skipped
    and listed with their reason; ``kept + len(skipped) == rows`` always. A shard whose every
    image is broken still completes (an empty, valid TFRecord file) and says so.
    """
    manifest_path, image_root = Path(manifest_path), Path(image_root)
    out_path, report_path = Path(out_path), Path(report_path)
    total, start, stop, columns = _read_manifest_rows(manifest_path, int(num_shards), int(shard_index))
    rows = _ShardRows(manifest_path, total, start, stop, columns)
    log.info(
        "shard %d/%d: manifest rows [%d, %d) of %d from %s",
        shard_index,
        num_shards,
        start,
        stop,
        total,
        manifest_path,
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writer, skipped = _write_atomically(out_path, rows, image_root, settings)
    seconds = time.perf_counter() - t0
    report = _shard_report(shard_index, num_shards, out_path, rows, writer, skipped, settings)
    write_json(report, report_path)
    _log_shard(report, seconds, out_path)
    return report
