"""A Quilt-format lookup + image folder holding every kind of bad input we must survive."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from quiltflow.data.demo import LOOKUP_COLUMNS as QUILT_COLUMNS

CLASSES = ("Breast", "Renal", "Pulmonary")


def _video_id(label: int, video: int) -> str:
    # 11 characters; some start with '_' or '-' (legal YouTube ids), never split on '_'.
    prefix = "_-x"[video % 3]
    return f"{prefix}{CLASSES[label][:3]}{label}{video:06d}"[:11].ljust(11, "z")


def _tile(rng: np.random.Generator, label: int, size: int = 40) -> np.ndarray:
    base = np.array([[200, 120, 180], [150, 90, 200], [230, 170, 190]][label], dtype=np.float32)
    noise = rng.normal(0, 25, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _png_bomb(path: Path, side: int = 40000) -> None:
    """A valid-looking PNG header that claims side x side pixels (1.6 G) in a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def make_bad_input_dataset(root: Path, seed: int = 0) -> dict:
    """Write root/lookup.csv and root/images/; return what a correct pipeline must report."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows: list[dict] = []

    def add_row(name: str, label: int, **extra) -> None:
        pathology = extra.pop("pathology", str([CLASSES[label], "Bone", "Cardiac"]))
        rows.append({
            "caption": "SYNTHETIC TEST ROW", "image_path": name, "subset": "quilt", "split": "train",
            "pathology": pathology, "magnification": 1.0, "height": 40.0, "width": 40.0,
            "not_histology": 0, "single_wsi": 0, **extra,
        })  # fmt: skip

    good: list[str] = []
    for label in range(len(CLASSES)):
        for video in range(6):
            for frame in range(3):
                name = f"{_video_id(label, video)}_image_{label}{video}{frame}-good.jpg"
                Image.fromarray(_tile(rng, label)).save(images / name, quality=90)
                add_row(name, label)
                good.append(name)
    # A second caption row for some images: deduplicated, counted.
    for name in good[:5]:
        add_row(name, int(name.split("_image_")[1][0]))

    bad_files: dict[str, str] = {}  # image -> kind; these pass the filter and are skipped when sharding
    converted: list[str] = []  # odd modes that must be converted to RGB and kept

    def add_file(kind: str, label: int, writer, keep: bool) -> None:
        name = f"{_video_id(label, 7 + len(rows) % 3)}_image_{kind}.{'png' if 'png' in kind else 'jpg'}"
        writer(images / name)
        add_row(name, label)
        (converted.append(name) if keep else bad_files.__setitem__(name, kind))

    jpeg = images / good[0]
    add_file(
        "corrupt",
        0,
        lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 600, dtype=np.uint8))),
        False,
    )
    add_file("truncated", 1, lambda p: p.write_bytes(jpeg.read_bytes()[:200]), False)
    add_file("zero-byte", 2, lambda p: p.write_bytes(b""), False)
    add_file("not-an-image", 0, lambda p: p.write_text("this is a caption, not a JPEG\n"), False)
    add_file("bomb-png", 1, _png_bomb, False)
    add_file("grayscale", 2, lambda p: Image.fromarray(_tile(rng, 2)[..., 0]).save(p), True)
    add_file("rgba-png", 0, lambda p: Image.fromarray(_tile(rng, 0)).convert("RGBA").save(p), True)
    add_file("cmyk", 1, lambda p: Image.fromarray(_tile(rng, 1)).convert("CMYK").save(p), True)
    add_file(
        "sixteen-bit-png", 2, lambda p: Image.fromarray(_tile(rng, 2)[..., 0].astype(np.uint16) * 257).save(p), True
    )

    # Rows the filter must drop, each for its own reason.
    add_row("nonexistent_image_missing.jpg", 0)  # missing file
    add_row("../outside_image_escape.jpg", 0)  # path traversal
    (root / "outside_image_escape.jpg").write_bytes(jpeg.read_bytes())
    add_row(str((images / good[1]).resolve()), 0)  # absolute path
    add_row(good[2].replace("good", "malformed"), 0, pathology="['Breast', 'Renal'")  # malformed list
    Image.fromarray(_tile(rng, 0)).save(images / good[2].replace("good", "malformed"))
    lonely = f"{_video_id(0, 9)}_image_lonely.jpg"
    Image.fromarray(_tile(rng, 0)).save(images / lonely)
    add_row(lonely, 0, pathology="['Ophthalmic']")  # a class left with one image
    nh = f"{_video_id(1, 9)}_image_nothisto.jpg"
    Image.fromarray(_tile(rng, 1)).save(images / nh)
    add_row(nh, 1, not_histology=1)

    table = pd.DataFrame(rows)
    for column in QUILT_COLUMNS:
        if column not in table:
            table[column] = "" if column.endswith("text") or column == "med_umls_ids" else 0
    table["Unnamed: 0"] = range(len(table))
    lookup = root / "lookup.csv"
    table[list(QUILT_COLUMNS)].to_csv(lookup, index=False)
    return {
        "lookup": lookup,
        "image_root": images,
        "rows": len(table),
        "bad_files": bad_files,
        "converted": converted,
    }
