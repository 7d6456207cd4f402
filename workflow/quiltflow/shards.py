"""Split manifests -> TFRecord shards of resized JPEGs, and the per-split shard index.

Sharding workers use PIL only (no TensorFlow: ~50 MB per worker instead of ~630 MB). The
Snakefile imports :func:`shard_names` while building the DAG, so this module imports only the
standard library, numpy and PIL at the top; pyarrow is imported where a manifest is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .jsonio import read_json, write_json
from .tasks import MULTICLASS, read_task
from .tfrecord_io import TFRecordWriter, decode_example, encode_example, iter_records

if TYPE_CHECKING:  # settings imports jsonschema and the schema; the DAG build needs neither
    from .settings import ShardSettings

log = logging.getLogger(__name__)

# 8K UHD frames are 33 MP; nothing in Quilt-1M comes near 50 MP, and a PNG that claims more is
# far likelier a decompression bomb (PIL would need >150 MB to decode it). prepare_image checks
# the header's size against this before decoding and counts the file as a skip.
MAX_PIXELS = 50_000_000

MANIFEST_COLUMNS = ("image_id", "label_index", "group")
# Every target label of a row (multi-label); a manifest without it has one label per row.
TARGETS_COLUMN = "label_indices"

# Skip reasons (keys of ``skipped_by_reason``).
MISSING = "missing"
NOT_A_FILE = "not_a_file"
UNREADABLE = "unreadable"
ZERO_BYTE = "zero_byte"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
DECOMPRESSION_BOMB = "decompression_bomb"
UNSUPPORTED_MODE = "unsupported_mode"

# File signatures of formats PIL reads: a file that starts like an image but cannot be
# identified is a broken image ("corrupt"), anything else is "not_an_image".
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


class BadImage(Exception):
    """An input image that cannot be used; ``reason`` is one of the skip-reason constants."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------ shard geometry


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


# ------------------------------------------------------------------------------ one image


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))  # EXIF Orientation tag
    except Exception:  # a broken EXIF block should not cost us the image itself
        return 1


# Same table as PIL.ImageOps.exif_transpose.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16-bit is scaled, not clipped."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16"):
        # Nominal 16-bit range: 65535 -> 255 (PIL's own convert("L") would clip at 255).
        a = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        # 32-bit int/float have no nominal range: stretch this image's min..max to 0..255.
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except ValueError as e:
        raise BadImage(UNSUPPORTED_MODE, f"mode {mode}: {e}") from None


def _read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadImage(MISSING, str(path)) from None
    except IsADirectoryError:
        raise BadImage(NOT_A_FILE, str(path)) from None
    except OSError as e:
        raise BadImage(UNREADABLE, f"{path}: {e.strerror or e}") from None
    if not data:
        raise BadImage(ZERO_BYTE, str(path))
    return data


def prepare_image(
    path: str | os.PathLike,
    image_size: int,
    jpeg_quality: int,
    *,
    max_pixels: int = MAX_PIXELS,
) -> bytes:
    """Decode ``path`` and return the JPEG bytes of its ``image_size`` x ``image_size`` RGB view.

    Policy (``center_crop`` framing): take the centred square whose side is the image's short
    side, resize it to ``image_size`` (bilinear) and encode JPEG at ``jpeg_quality`` -- the same
    pixels as "resize the short side to image_size, then centre-crop". See ``prepare_views``.
    """
    return prepare_views(path, image_size, jpeg_quality, framing="center_crop", max_pixels=max_pixels)[0]


def prepare_views(
    path: str | os.PathLike,
    image_size: int,
    jpeg_quality: int,
    *,
    framing: str = "center_crop",
    grid_size: int = 2,
    max_pixels: int = MAX_PIXELS,
) -> list[bytes]:
    """The JPEG bytes of every square record one image becomes (the one home of this policy).

    ``center_crop``: one view, the centred square of the short side. ``pad``: one view, the whole
    image resized to fit and letterboxed with black bars. ``grid``: ``grid_size``^2 views, row by
    row, each the centred square of its cell. JPEGs are decoded with DCT scaling (``draft``) to
    the smallest size still large enough, which does most of the shrinking for free. EXIF
    orientation is applied (to the small centre crop, where it is cheapest). Every mode becomes
    RGB (see ``_to_rgb``). Same input and PIL version -> same bytes.

    Raises :class:`BadImage` (with a skip reason) for missing, empty, unreadable, non-image,
    truncated, corrupt or oversized (> ``max_pixels``) files.
    """
    data = _read_file(Path(path))
    draft_side = image_size * (grid_size if framing == "grid" else 1)
    with _bad_image_reasons(data):
        rgb, orientation = _decode(data, draft_side, max_pixels)
        if framing == "center_crop":
            views = [_square(rgb, (0, 0, *rgb.size), image_size)]
        else:
            if orientation in _TRANSPOSE:  # the frame is not square: orient it before framing
                rgb, orientation = rgb.transpose(_TRANSPOSE[orientation]), 1
            views = _letterbox(rgb, image_size) if framing == "pad" else _grid_cells(rgb, image_size, grid_size)
    if orientation in _TRANSPOSE:
        views = [view.transpose(_TRANSPOSE[orientation]) for view in views]
    return [_jpeg(view, jpeg_quality) for view in views]


@contextlib.contextmanager
def _bad_image_reasons(data: bytes):
    """Turn PIL's many decode errors into BadImage with a skip reason."""
    try:
        yield
    except BadImage:
        raise
    except Image.DecompressionBombError as e:  # PIL's own limit, for formats it sizes late
        raise BadImage(DECOMPRESSION_BOMB, str(e)) from None
    except UnidentifiedImageError:
        reason = CORRUPT if data.startswith(_IMAGE_MAGIC) else NOT_AN_IMAGE
        raise BadImage(reason, "cannot identify image file") from None
    except MemoryError:
        raise BadImage(DECOMPRESSION_BOMB, "out of memory while decoding") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on junk
        reason = TRUNCATED if "truncated" in str(e).lower() else CORRUPT
        raise BadImage(reason, f"{type(e).__name__}: {e}") from None


def _decode(data: bytes, draft_side: int, max_pixels: int) -> tuple[Image.Image, int]:
    """(RGB image decoded at >= draft_side where the format allows, EXIF orientation)."""
    im = Image.open(io.BytesIO(data))  # reads the header only
    width, height = im.size
    if width * height > max_pixels:
        raise BadImage(DECOMPRESSION_BOMB, f"{width}x{height} pixels > {max_pixels}")
    if width < 1 or height < 1:
        raise BadImage(CORRUPT, f"size {width}x{height}")
    im.draft("RGB", (draft_side, draft_side))  # no-op for non-JPEG formats
    im.load()  # decode now, so broken data raises here and not in a later accessor
    orientation = _orientation(im)
    return _to_rgb(im), orientation


def _square(rgb: Image.Image, cell: tuple[float, float, float, float], image_size: int) -> Image.Image:
    """The centred square of ``cell`` (left, top, right, bottom), resized to image_size."""
    left, top, right, bottom = cell
    side = min(right - left, bottom - top)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


def _letterbox(rgb: Image.Image, image_size: int) -> list[Image.Image]:
    """The whole image, its long side resized to image_size, centred on a black square."""
    w, h = rgb.size
    scale = image_size / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("RGB", (image_size, image_size))
    canvas.paste(resized, ((image_size - size[0]) // 2, (image_size - size[1]) // 2))
    return [canvas]


def _grid_cells(rgb: Image.Image, image_size: int, grid_size: int) -> list[Image.Image]:
    """grid_size x grid_size equal cells, row by row, each its centred square at image_size."""
    w, h = rgb.size
    cw, ch = w / grid_size, h / grid_size
    return [
        _square(rgb, (col * cw, row * ch, (col + 1) * cw, (row + 1) * ch), image_size)
        for row in range(grid_size)
        for col in range(grid_size)
    ]


def _jpeg(view: Image.Image, jpeg_quality: int) -> bytes:
    buf = io.BytesIO()
    view.save(buf, format="JPEG", quality=int(jpeg_quality), subsampling="4:2:0")
    return buf.getvalue()


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
        if image_id is None or label is None or int(label) < 0 or not labels or min(labels) < 0:
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


def _examples(views: list[bytes], image_id: str, label: int, labels: list[int], group: str | None) -> list[dict]:
    """One record per view; grid cells get their own id and carry the source image's id.
    ``image/label`` is the first label (the stratum), ``image/labels`` every target label."""
    common = {"image/label": label, "image/labels": [int(x) for x in labels], "image/group": group or ""}
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


# ------------------------------------------------------------------------------ split index

INDEX_KEYS = ("split", "image_size", "num_records", "num_classes", "shards", "skipped_by_reason")


def _read_shard_report(report_file: Path, shard: Path) -> dict:
    """A shard's report, checked for its keys and its file name (the shard must exist)."""
    report = read_json(report_file, "shard report")
    for key in ("rows", "kept", "skipped_by_reason", "bytes", "sha256"):
        if key not in report:
            raise UserError(f"{report_file}: shard report has no key {key!r}")
    if report.get("file", shard.name) != shard.name:
        raise UserError(f"{report_file}: report is for {report['file']}, not {shard.name}")
    if not shard.is_file():
        raise UserError(f"{shard}: shard file is missing")
    return report


def _count_labels(shard: Path, data: bytes, class_counts: list[int]) -> int:
    """Walk a shard's records (``data``), adding each target label to ``class_counts`` (records
    carrying the label); the record count."""
    num_classes = len(class_counts)
    records = 0
    for record in iter_records(io.BytesIO(data), verify=False):
        example = decode_example(record)
        labels = example.get("image/labels") or example.get("image/label", [-1])
        for label in labels:
            if not 0 <= label < num_classes:
                raise UserError(f"{shard}: record {records} has label {label} outside 0..{num_classes - 1}")
            class_counts[label] += 1
        records += 1
    return records


def _index_entry(shard: Path, report_file: Path, index_dir: Path, class_counts: list[int]) -> tuple[dict, dict]:
    """(the shard's index entry, its report), once the shard's bytes and records match the
    report; its labels are added to ``class_counts``."""
    report = _read_shard_report(report_file, shard)
    data = shard.read_bytes()
    size, sha = len(data), hashlib.sha256(data).hexdigest()
    if size != report["bytes"] or sha != report["sha256"]:
        raise UserError(f"{shard}: size/sha256 differ from {report_file.name} (stale shard?)")
    records = _count_labels(shard, data, class_counts)
    if records != report.get("records", report["kept"]):
        raise UserError(f"{shard}: {records} records but its report says {report.get('records', report['kept'])}")
    if report["rows"] != report["kept"] + sum(report["skipped_by_reason"].values()):
        raise UserError(f"{report_file}: rows != kept + skipped")
    rel = os.path.relpath(shard.resolve(), index_dir.resolve())
    entry = {"path": Path(rel).as_posix(), "records": records, "bytes": size, "sha256": sha}
    return entry, report


def write_index(
    split: str,
    image_size: int,
    num_classes: int,
    shard_paths: Sequence[str | os.PathLike],
    report_paths: Sequence[str | os.PathLike],
    index_path: str | os.PathLike,
    task: str = MULTICLASS,
) -> dict:
    """Write the split index JSON from the shards and their reports; return it. ``task``
    (quiltflow.tasks) tells the reader what labels to yield.

    Each shard is read back once (pure Python, no TensorFlow): its size and SHA-256 must match
    its report, and its records are walked to count labels, so the index's record and class
    counts are exact. The SHA-256 already proves the bytes are those the writer framed, so the
    walk skips the per-record CRCs. A mismatch (stale or damaged shard) is a UserError naming
    the file.
    """
    index_path = Path(index_path)
    if len(shard_paths) != len(report_paths):
        raise UserError(f"{index_path}: {len(shard_paths)} shard files but {len(report_paths)} shard reports")
    shards, skipped_by_reason = [], Counter()
    class_counts = [0] * int(num_classes)
    total_rows, records_per_image = 0, set()
    for shard, report_file in zip(map(Path, shard_paths), map(Path, report_paths)):
        entry, report = _index_entry(shard, report_file, index_path.parent, class_counts)
        shards.append(entry)
        total_rows += report["rows"]
        skipped_by_reason.update(report["skipped_by_reason"])
        records_per_image.add(int(report.get("records_per_image", 1)))
    if len(records_per_image) > 1:
        raise UserError(f"{index_path}: shards of one split were framed differently (stale shards?)")

    num_records = sum(s["records"] for s in shards)
    index = {
        "split": split,
        "image_size": int(image_size),
        "num_records": num_records,
        "num_classes": int(num_classes),
        "task": task,
        "shards": shards,
        "skipped_by_reason": dict(sorted(skipped_by_reason.items())),
        "rows": total_rows,
        "class_counts": class_counts,
        # Records of one source image (grid framing: its cells); evaluation averages them.
        "records_per_image": records_per_image.pop() if records_per_image else 1,
    }
    index_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(index, index_path)
    log.info(
        "%s: %d records in %d shards (%d manifest rows, skipped %s)",
        split,
        num_records,
        len(shards),
        total_rows,
        index["skipped_by_reason"] or "none",
    )
    return index


def index_split(
    split: str,
    settings: ShardSettings,
    shard_paths: Sequence[str | os.PathLike],
    report_paths: Sequence[str | os.PathLike],
    label_map_path: str | os.PathLike,
    index_path: str | os.PathLike,
) -> dict:
    """:func:`write_index` with ``num_classes`` taken from ``label_map.json`` and the image
    size of ``settings``."""
    classes = read_json(label_map_path, "label map").get("classes")
    if not classes:
        raise UserError(f"{label_map_path}: 'classes' missing or empty")
    task = read_task(label_map_path)
    return write_index(split, settings.image_size, len(classes), shard_paths, report_paths, index_path, task)


def load_index(index_path: str | os.PathLike) -> dict:
    """Read and check a split index JSON (no TensorFlow needed)."""
    index = read_json(index_path, "split index")
    for key in INDEX_KEYS:
        if key not in index:
            raise UserError(f"{index_path}: split index has no key {key!r}")
    if sum(s["records"] for s in index["shards"]) != index["num_records"]:
        raise UserError(f"{index_path}: shard record counts do not add up to num_records")
    return index


def index_shard_files(index_path: str | os.PathLike, index: dict | None = None) -> list[Path]:
    """Absolute shard paths of a split index (stored relative to the index's folder)."""
    index_path = Path(index_path)
    index = load_index(index_path) if index is None else index
    files = [(index_path.parent / s["path"]).resolve() for s in index["shards"]]
    for f in files:
        if not f.is_file():
            raise UserError(f"{index_path}: shard {f} is missing")
    return files
