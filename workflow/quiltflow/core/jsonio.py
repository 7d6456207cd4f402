"""JSON and checksum helpers shared by every stage.

Standard library only: the Snakefile imports modules that use them while it builds the DAG.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from quiltflow.core.errors import UserError


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON input; a missing or malformed file is a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{what} {path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def write_json(obj: Any, path: str | os.PathLike, *, sort_keys: bool = False) -> None:
    """Indent 2, trailing newline, no NaN; written to a temporary name and renamed, so an
    interrupted job never leaves half a file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_label_map(path: str | os.PathLike) -> list[str]:
    """Class names of ``label_map.json`` in index order; the one reader every stage uses.

    A missing file, a missing ``classes`` key or fewer than two classes is a one-line UserError.
    """
    label_map = read_json(path, "label map")
    classes = label_map.get("classes") if isinstance(label_map, dict) else None
    if not isinstance(classes, list):
        raise UserError(f"label map {path}: missing key classes")
    if len(classes) < 2:
        raise UserError(f"label map {path}: need at least 2 classes, got {len(classes)}")
    return [str(name) for name in classes]
