"""One image, prepared as the shards store it: decode (with its skip reason when it cannot be),
EXIF orientation, RGB, framing (center crop, letterbox or grid cells) and the JPEG round trip.

PIL only: prediction on new images prepares them exactly as the shard jobs did.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# 8K UHD frames are 33 MP; nothing in Quilt-1M comes near 50 MP, and a PNG that claims more is
# far likelier a decompression bomb (PIL would need >150 MB to decode it). prepare_image checks
# the header's size against this before decoding and counts the file as a skip.
MAX_PIXELS = 50_000_000

# File names taken as images (lower-cased suffix): a folder dataset's class folders and prediction's
# folders are listed with this one list; every format here is one PIL decodes (see _IMAGE_MAGIC).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")


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
