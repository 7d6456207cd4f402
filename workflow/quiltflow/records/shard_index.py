"""The per-split shard index (``results/tfrecords/{split}.index.json``): its writer and reader."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, write_json
from quiltflow.core.tasks import MULTICLASS, read_task
from quiltflow.records.tables import UNLABELED_INDEX
from quiltflow.records.tfrecord_io import decode_example, iter_records

if TYPE_CHECKING:  # settings imports jsonschema and the schema; the DAG build needs neither
    from quiltflow.core.settings import ShardSettings

log = logging.getLogger(__name__)


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


def _count_labels(shard: Path, data: bytes, class_counts: list[int]) -> tuple[int, int]:
    """Walk a shard's records (``data``), adding each target label to ``class_counts`` (records
    carrying the label); (the record count, records of unlabeled frames)."""
    num_classes = len(class_counts)
    records = unlabeled = 0
    for record in iter_records(io.BytesIO(data), verify=False):
        example = decode_example(record)
        labels = example.get("image/labels") or example.get("image/label", [-1])
        if example.get("image/label") == [UNLABELED_INDEX] and not example.get("image/labels"):
            unlabeled += 1  # a frame of the unlabeled pool (quiltflow.data.unlabeled)
            labels = []
        for label in labels:
            if not 0 <= label < num_classes:
                raise UserError(f"{shard}: record {records} has label {label} outside 0..{num_classes - 1}")
            class_counts[label] += 1
        records += 1
    return records, unlabeled


def _index_entry(shard: Path, report_file: Path, index_dir: Path, class_counts: list[int]) -> tuple[dict, dict]:
    """(the shard's index entry, its report), once the shard's bytes and records match the
    report; its labels are added to ``class_counts``."""
    report = _read_shard_report(report_file, shard)
    data = shard.read_bytes()
    size, sha = len(data), hashlib.sha256(data).hexdigest()
    if size != report["bytes"] or sha != report["sha256"]:
        raise UserError(f"{shard}: size/sha256 differ from {report_file.name} (stale shard?)")
    records, unlabeled = _count_labels(shard, data, class_counts)
    if records != report.get("records", report["kept"]):
        raise UserError(f"{shard}: {records} records but its report says {report.get('records', report['kept'])}")
    if report["rows"] != report["kept"] + sum(report["skipped_by_reason"].values()):
        raise UserError(f"{report_file}: rows != kept + skipped")
    rel = os.path.relpath(shard.resolve(), index_dir.resolve())
    entry = {"path": Path(rel).as_posix(), "records": records, "bytes": size, "sha256": sha}
    if unlabeled:  # only the unlabeled pool's shards: the labelled indexes stay as they were
        entry["unlabeled_records"] = unlabeled
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
    (quiltflow.core.tasks) tells the reader what labels to yield.

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
    unlabeled = sum(s.get("unlabeled_records", 0) for s in shards)
    if unlabeled:
        index["unlabeled_records"] = unlabeled
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
