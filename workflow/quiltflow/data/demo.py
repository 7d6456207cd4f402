"""Embedded synthetic demo dataset in Quilt-1M format (offline, deterministic from the seed).

``generate_demo`` writes a 15-column Quilt lookup CSV whose captions say "SYNTHETIC DEMO" and a
flat folder of H&E-like JPEG tiles. Classes differ in tissue *structure* (nuclear density, size
and shape, gland/alveolar lumens, fibre texture) and only slightly in stain balance, while every
video gets its own strong stain shift, so mean colour alone does not separate the classes.

The lookup also carries the dirt of the real one, so every filter has something to do:
several caption rows per image, rows whose image is missing, corrupt / truncated / zero-byte
files, ``not_histology`` images, openpath / pubmed / laion rows (NaN magnification), malformed
``pathology`` strings, unsafe paths (absolute, ``..``), a few undersized and non-square tiles,
a tiny tail class, and video ids that start with ``_``/``-`` or contain ``_image_``.
"""

from __future__ import annotations

import io
import logging
import math
import uuid
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from quiltflow.core.errors import UserError
from quiltflow.data.lookup import SUBSPECIALTIES

log = logging.getLogger("quiltflow.data.demo")

DEFAULT_CLASSES = (
    "Breast",
    "Dermatopathology",
    "Gastrointestinal",
    "Hematopathology",
    "Neuropathology",
    "Pulmonary",
)
TAIL_CLASS = "Ophthalmic"  # a handful of pubmed images: a class filters should drop
LOOKUP_COLUMNS = (
    "Unnamed: 0",
    "caption",
    "image_path",
    "subset",
    "split",
    "pathology",
    "roi_text",
    "noisy_text",
    "corrected_text",
    "med_umls_ids",
    "magnification",
    "height",
    "width",
    "not_histology",
    "single_wsi",
)
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))

# Reference stain vectors (optical density per unit stain, R G B), Ruifrok & Johnston.
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])


@dataclass(frozen=True)
class TissueStyle:
    """What makes one class's tissue look like itself (pixel units are for a 128 px tile)."""

    nuclei: float  # nuclei per 10,000 px
    radius: float  # mean nuclear radius
    elongation: float  # long/short axis ratio
    hema: float  # nuclear haematoxylin strength
    eosin: float  # stroma eosin strength (the small class-specific stain balance)
    lumens: int  # white gland / alveolar spaces per tile
    lumen_radius: float
    ring: bool  # nuclei line the lumens (glands) or not (alveoli)
    fibre_amp: float  # oriented fibre texture amplitude
    fibre_period: float  # fibre wavelength in px


_STYLES = {
    "Breast": TissueStyle(22, 3.2, 1.3, 1.0, 0.55, 2, 13, True, 0.35, 7.0),
    "Dermatopathology": TissueStyle(14, 2.4, 2.6, 0.9, 0.62, 0, 0, False, 0.6, 5.0),
    "Gastrointestinal": TissueStyle(30, 2.9, 1.7, 1.0, 0.50, 4, 9, True, 0.12, 6.0),
    "Hematopathology": TissueStyle(85, 2.3, 1.05, 1.1, 0.42, 0, 0, False, 0.05, 4.0),
    "Neuropathology": TissueStyle(10, 3.1, 1.1, 0.9, 0.50, 0, 0, False, 0.3, 2.2),
    "Pulmonary": TissueStyle(18, 2.7, 1.5, 1.0, 0.52, 7, 15, False, 0.1, 6.0),
}


def tissue_style(name: str) -> TissueStyle:
    """Style of a class: hand-made for the defaults, derived from the name's hash otherwise."""
    if name in _STYLES:
        return _STYLES[name]
    r = np.random.default_rng(zlib.crc32(name.encode()))
    lumens = int(r.integers(0, 6))
    return TissueStyle(
        nuclei=float(r.uniform(10, 80)),
        radius=float(r.uniform(2.2, 3.4)),
        elongation=float(r.uniform(1.0, 2.5)),
        hema=float(r.uniform(0.9, 1.1)),
        eosin=float(r.uniform(0.42, 0.62)),
        lumens=lumens,
        lumen_radius=float(r.uniform(8, 16)) if lumens else 0.0,
        ring=bool(r.integers(0, 2)),
        fibre_amp=float(r.uniform(0.05, 0.6)),
        fibre_period=float(r.uniform(2.2, 7.0)),
    )


def _video_style(rng: np.random.Generator, style: TissueStyle) -> TissueStyle:
    """Per-video variation of a class's tissue (patients differ), so classes overlap a little."""
    return replace(
        style,
        nuclei=style.nuclei * float(rng.lognormal(0, 0.25)),
        radius=style.radius * float(rng.lognormal(0, 0.1)),
        lumen_radius=style.lumen_radius * float(rng.lognormal(0, 0.15)),
        fibre_amp=style.fibre_amp * float(rng.lognormal(0, 0.3)),
        fibre_period=style.fibre_period * float(rng.lognormal(0, 0.15)),
    )


@dataclass(frozen=True)
class Stain:
    """One video's staining/scanning: the shift that makes mean colour unreliable."""

    hema_vec: np.ndarray
    eosin_vec: np.ndarray
    hema_gain: float
    eosin_gain: float
    brightness: float


def _video_stain(rng: np.random.Generator) -> Stain:
    def jitter(v: np.ndarray) -> np.ndarray:
        v = np.clip(v + rng.normal(0, 0.08, 3), 0.02, None)
        return v / np.linalg.norm(v)

    return Stain(
        jitter(_HEMATOXYLIN),
        jitter(_EOSIN),
        float(rng.lognormal(0, 0.35)),
        float(rng.lognormal(0, 0.35)),
        float(rng.uniform(0.85, 1.0)),
    )


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return ndimage.zoom(grid, (h / (gh - 1), w / (gw - 1)), order=1)[:h, :w]


def _stamp(
    canvas: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
) -> None:
    """Draw soft filled ellipses (all at once, in small patches) into ``canvas`` with max()."""
    if len(ys) == 0:
        return
    h, w = canvas.shape
    half = int(np.ceil(a.max())) + 2
    off = np.arange(-half, half + 1)
    cy, cx = np.round(ys).astype(int), np.round(xs).astype(int)
    py = cy[:, None, None] + off[None, :, None]
    px = cx[:, None, None] + off[None, None, :]
    dy, dx = py - ys[:, None, None], px - xs[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * c + dy * s) / a[:, None, None]
    v = (-dx * s + dy * c) / b[:, None, None]
    val = np.clip((1.0 - (u * u + v * v)) * 3.0, 0.0, 1.0).astype(np.float32)
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w) & (val > 0)
    flat = (py * w + px)[inside]
    np.maximum.at(canvas.reshape(-1), flat, val[inside])


def render_tile(rng: np.random.Generator, style: TissueStyle, stain: Stain, h: int, w: int) -> np.ndarray:
    """One H&E-like RGB tile (uint8, h x w x 3) of the given tissue style and stain."""
    scale = min(h, w) / 128.0
    area = h * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Lumens: white spaces; glands get a ring of nuclei, alveoli thin pink walls.
    lumen = np.zeros((h, w), np.float32)
    n_lumen = rng.poisson(style.lumens * area / 128**2) if style.lumens else 0
    ly, lx = rng.uniform(0, h, n_lumen), rng.uniform(0, w, n_lumen)
    la = rng.uniform(0.7, 1.3, n_lumen) * style.lumen_radius * scale
    lb = la / rng.uniform(1.0, 1.8, n_lumen)
    lt = rng.uniform(0, np.pi, n_lumen)
    _stamp(lumen, ly, lx, la, lb, lt)

    # Stroma: eosin with an oriented fibre texture, warped by smooth noise.
    angle = rng.uniform(0, np.pi)
    warp = _smooth_noise(rng, h, w, max(8, int(24 * scale))) * 2.5
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / (style.fibre_period * scale) + warp
    fibre = np.sin(2 * np.pi * phase) * (0.5 + 0.5 * _smooth_noise(rng, h, w, max(4, int(10 * scale))))
    eosin = style.eosin * (1.0 + style.fibre_amp * fibre) * (1 + 0.15 * _smooth_noise(rng, h, w, 32))
    hema_bg = 0.06 + 0.04 * _smooth_noise(rng, h, w, 16)

    # Nuclei: Poisson count, outside lumens; gland nuclei sit on the lumen rims.
    n = rng.poisson(style.nuclei * rng.lognormal(0, 0.2) * area / 1e4)
    ny, nx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    if n_lumen:
        free = lumen[ny.astype(int).clip(0, h - 1), nx.astype(int).clip(0, w - 1)] < 0.2
        ny, nx = ny[free], nx[free]
    nt = rng.uniform(0, np.pi, len(ny))
    if style.ring and n_lumen:
        k = int(2 * np.pi * la.mean() / (2.2 * style.radius * scale)) + 1
        ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 0.3, (n_lumen, k))
        ca, sa = 1.12 * la[:, None] * np.cos(ang), 1.12 * lb[:, None] * np.sin(ang)  # just outside
        ct, st = np.cos(lt)[:, None], np.sin(lt)[:, None]
        ry, rx = ly[:, None] + ca * st + sa * ct, lx[:, None] + ca * ct - sa * st
        ny, nx = np.concatenate([ny, ry.ravel()]), np.concatenate([nx, rx.ravel()])
        nt = np.concatenate([nt, (ang + lt[:, None]).ravel()])
    radius = style.radius * scale * rng.lognormal(0, 0.18, len(ny))
    nuc = np.zeros((h, w), np.float32)
    _stamp(nuc, ny, nx, radius * np.sqrt(style.elongation), radius / np.sqrt(style.elongation), nt)
    chromatin = 0.75 + 0.5 * rng.random((h, w), dtype=np.float32)

    tissue = 1.0 - 0.95 * lumen
    hema = (style.hema * 1.4 * nuc * chromatin + hema_bg) * tissue
    eos = eosin * tissue * (1.0 - 0.6 * nuc)
    od = hema[..., None] * stain.hema_gain * stain.hema_vec + eos[..., None] * stain.eosin_gain * stain.eosin_vec
    rgb = 255.0 * stain.brightness * np.exp(-od)
    rgb += rng.normal(0, 4.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _not_histology_tile(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A 'slide of text' frame: pale background with dark bars, as in lecture videos."""
    img = np.full((h, w, 3), rng.uniform(200, 250, 3), np.float32)
    for _ in range(int(rng.integers(3, 8))):
        y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w // 2))
        img[y : y + 4, x : x + int(rng.integers(w // 4, w // 2))] = rng.uniform(0, 60, 3)
    return img.astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Unique 11-char YouTube-like ids; some start with '_' or '-', one contains '_image_'."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        vid = "".join(rng.choice(_ID_ALPHABET, 11))
        k = len(ids)
        if k % 5 == 1:
            vid = "_" + vid[1:]
        elif k % 5 == 3:
            vid = "-" + vid[1:]
        if k == 2:
            vid = vid[:2] + "_image_" + vid[9:]  # the id itself looks like a separator
        if vid not in seen:
            seen.add(vid)
            ids.append(vid)
    return ids


def _tile_shape(rng: np.random.Generator, t: int) -> tuple[int, int]:
    """Mostly t x t; some larger, some non-square, a few undersized (for min_image_side)."""
    kind = rng.choice(5, p=[0.6, 0.12, 0.1, 0.1, 0.08])
    return [
        (t, t),
        (int(t * 1.25), int(t * 1.25)),
        (t, int(t * 1.25)),
        (int(t * 1.5), t),
        (int(t * 0.75), int(t * 0.75)),
    ][kind]


def _pathology_string(rng: np.random.Generator, primary: str) -> str:
    """A video's ``pathology`` cell: its class first, then 0-2 other subspecialties."""
    others = [s for s in SUBSPECIALTIES if s != primary]
    extra = list(rng.choice(others, int(rng.integers(0, 3)), replace=False))
    return repr([primary, *map(str, extra)])


@dataclass(frozen=True)
class _Video:
    """One Quilt video of a class: all its images share the pathology, split, stain and style."""

    video_id: str
    pathology: str
    split: str
    stain: Stain
    style: TissueStyle


@dataclass(frozen=True)
class _DemoImage:
    """One image of the lookup: a file to write, or (kind ``missing``) one that must not exist."""

    name: str
    subset: str
    pathology: Any  # the lookup's cell: a list repr, a malformed string or NaN
    split: str
    kind: str  # tile, not_histology, missing, truncated, zero_byte or not_jpeg
    style: TissueStyle | None
    stain: Stain | None
    magnification: float
    height: int
    width: int


class _ImagePlan:
    """The demo's images in order. ``add`` draws each image's shape from the shared generator,
    after the caller's own draws for its arguments, which keeps the demo's random sequence."""

    def __init__(self, rng: np.random.Generator, tile_size: int) -> None:
        self.rng = rng
        self.tile_size = tile_size
        self.images: list[_DemoImage] = []

    def quilt_name(self, video_id: str) -> str:
        return f"{video_id}_image_{uuid.UUID(bytes=self.rng.bytes(16), version=4)}.jpg"

    def single_name(self, subset: str) -> str:
        """File name of an openpath / pubmed / laion image (no video)."""
        return f"{subset}_{self.rng.bytes(6).hex()}.jpg"

    def add(
        self,
        name: str,
        subset: str,
        pathology: Any,
        split: str,
        kind: str,
        style: TissueStyle | None = None,
        stain: Stain | None = None,
        magnification: float = np.nan,
    ) -> None:
        height, width = _tile_shape(self.rng, self.tile_size)
        self.images.append(_DemoImage(name, subset, pathology, split, kind, style, stain, magnification, height, width))

    def add_video_image(
        self, name: str, video: _Video, kind: str, magnification: float, *, tissue: bool = True
    ) -> None:
        """A Quilt image of ``video``; ``tissue=False`` for kinds that draw no tissue."""
        style, stain = (video.style, video.stain) if tissue else (None, None)
        self.add(name, "quilt", video.pathology, video.split, kind, style, stain, magnification)


def _check_demo_params(classes: list[str], images_per_class: Any, tile_size: Any) -> None:
    """Config values come from YAML: reject what would make a broken or misleading demo."""
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"demo.classes={classes!r}: expected at least two distinct class names")
    if TAIL_CLASS in classes:
        raise UserError(f"demo.classes: {TAIL_CLASS!r} is reserved for the demo's tiny tail class")
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int) or images_per_class < 4:
        raise UserError(f"demo.images_per_class={images_per_class!r}: expected an integer >= 4")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or not 32 <= tile_size <= 1024:
        raise UserError(f"demo.tile_size={tile_size!r}: expected an integer in [32, 1024]")


def _class_videos(rng: np.random.Generator, cls: str, video_ids: list[str]) -> list[_Video]:
    """The videos of one class; about 15% of them go to the Quilt ``val`` split."""
    videos = []
    for video_id in video_ids:
        split = "val" if rng.random() < 0.15 else "train"
        pathology = _pathology_string(rng, cls)
        stain = _video_stain(rng)
        style = _video_style(rng, tissue_style(cls))
        videos.append(_Video(video_id, pathology, split, stain, style))
    return videos


def _add_class_images(plan: _ImagePlan, cls: str, video_ids: list[str], images_per_class: int) -> _Video:
    """One class's tiles: most from its videos (each at least one), a few openpath/pubmed singles.
    Return the class's first video, which the dirt reuses."""
    rng = plan.rng
    n_videos = len(video_ids)
    n_single = max(1, images_per_class // 12)
    videos = _class_videos(rng, cls, video_ids)
    n_quilt = images_per_class - n_single
    per_video = rng.multinomial(n_quilt - n_videos, np.ones(n_videos) / n_videos) + 1
    for video, n_images in zip(videos, per_video):
        for _ in range(n_images):
            name = plan.quilt_name(video.video_id)  # drawn before the magnification
            plan.add_video_image(name, video, "tile", float(rng.integers(0, 3)))
    for j in range(n_single):
        subset = "openpath" if j % 2 == 0 else "pubmed"
        name = plan.single_name(subset)
        style = _video_style(rng, tissue_style(cls))
        stain = _video_stain(rng)
        plan.add(name, subset, repr([cls]), "train", "tile", style, stain)
    return videos[0]


def _add_bad_quilt_images(plan: _ImagePlan, first_videos: list[_Video], n_dirt: int) -> None:
    """Quilt rows the filters must drop: not-histology frames, missing files, corrupt files."""
    for j in range(n_dirt):
        video = first_videos[j % len(first_videos)]
        for kind in ("not_histology", "missing"):
            plan.add_video_image(plan.quilt_name(video.video_id), video, kind, 1.0, tissue=False)
    for j, kind in enumerate(("truncated", "zero_byte", "not_jpeg", "truncated")):
        video = first_videos[(j + 1) % len(first_videos)]
        plan.add_video_image(plan.quilt_name(video.video_id), video, kind, 2.0)


def _add_other_subset_images(plan: _ImagePlan, classes: list[str], n_dirt: int) -> None:
    """Non-Quilt rows: missing openpath files, malformed pathology strings, laion rows without
    a pathology, and the tiny tail class."""
    rng = plan.rng
    for j in range(n_dirt):
        name = plan.single_name("openpath")
        plan.add(name, "openpath", repr([classes[j % len(classes)]]), "train", "missing")
    for malformed in ("['Renal', 'Pulmonary'", "Renal; Bone", "[Renal]", "['Bone', 3]"):
        name, stain = plan.single_name("pubmed"), _video_stain(rng)
        plan.add(name, "pubmed", malformed, "train", "tile", tissue_style(classes[0]), stain)
    for j in range(3):
        name, stain = plan.single_name("laion"), _video_stain(rng)
        pathology = np.nan if j else "[]"
        style = tissue_style(classes[j % len(classes)])
        plan.add(name, "laion", pathology, "train", "tile", style, stain)
    for _ in range(3):
        name, stain = plan.single_name("pubmed"), _video_stain(rng)
        style = tissue_style(TAIL_CLASS)
        plan.add(name, "pubmed", repr([TAIL_CLASS]), "train", "tile", style, stain)


_COUNTED_AS = {
    "tile": "tiles",
    "not_histology": "not_histology",
    "truncated": "corrupt",
    "zero_byte": "corrupt",
    "not_jpeg": "corrupt",
}


def _image_bytes(rng: np.random.Generator, image: _DemoImage) -> bytes:
    """The file content of an image that is not ``missing``; corrupt kinds spoil a real tile."""
    if image.kind == "not_histology":
        return _jpeg(_not_histology_tile(rng, image.height, image.width))
    full = _jpeg(render_tile(rng, image.style, image.stain, image.height, image.width))
    if image.kind == "truncated":
        return full[: len(full) // 3]
    if image.kind == "zero_byte":
        return b""
    if image.kind == "not_jpeg":
        return b"SYNTHETIC DEMO: not a JPEG\n"
    return full


def _write_images(rng: np.random.Generator, images: list[_DemoImage], image_dir: Path) -> dict[str, int]:
    """Write (or remove, for ``missing``) every image file; return counts by outcome."""
    counts = {"tiles": 0, "not_histology": 0, "corrupt": 0, "missing": 0}
    for image in images:
        file_path = image_dir / image.name
        if image.kind == "missing":
            file_path.unlink(missing_ok=True)
            counts["missing"] += 1
            continue
        file_path.write_bytes(_image_bytes(rng, image))
        counts[_COUNTED_AS[image.kind]] += 1
    return counts


def generate_demo(
    lookup_path: str | Path,
    image_dir: str | Path,
    *,
    seed: int,
    images_per_class: int,
    tile_size: int,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Write the synthetic lookup CSV and image folder; return counts of what was written."""
    classes = list(DEFAULT_CLASSES if classes is None else classes)
    _check_demo_params(classes, images_per_class, tile_size)
    lookup_path, image_dir = Path(lookup_path), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    lookup_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # The order of the steps is the order of the random draws: changing it changes the data.
    n_videos = max(4, round(images_per_class / 8))  # >= 4 so small classes reach every split
    video_ids = _video_ids(rng, n_videos * len(classes))
    plan = _ImagePlan(rng, tile_size)
    first_videos = [
        _add_class_images(plan, cls, video_ids[i * n_videos : (i + 1) * n_videos], images_per_class)
        for i, cls in enumerate(classes)
    ]
    n_dirt = max(2, len(classes) * images_per_class // 40)  # dirt is spread over the classes
    _add_bad_quilt_images(plan, first_videos, n_dirt)
    _add_other_subset_images(plan, classes, n_dirt)
    counts = _write_images(rng, plan.images, image_dir)
    lookup = _lookup_rows(rng, plan.images)
    lookup.to_csv(lookup_path, index=False, float_format="%.1f")

    summary = {
        "seed": seed,
        "classes": classes,
        "videos": len(video_ids),
        "images": len(plan.images),
        "rows": len(lookup),
        "tiles": counts["tiles"],
        "not_histology_images": counts["not_histology"],
        "corrupt_files": counts["corrupt"],
        "missing_images": counts["missing"],
        "other_subset_rows": int((lookup["subset"] != "quilt").sum()),
    }
    log.info("synthetic demo: %s", summary)
    return summary


def _lookup_rows(rng: np.random.Generator, images: list[_DemoImage]) -> pd.DataFrame:
    """1-4 caption rows per image plus three bad-path rows, shuffled; all 15 Quilt columns."""
    records = []
    for image in images:
        n_rows = int(rng.choice([1, 1, 2, 2, 3, 4]))
        label = "tissue" if image.style is not None else "slide"
        quilt = image.subset == "quilt"
        has_size = image.kind != "missing" or quilt  # Quilt rows always state the image size
        for k in range(n_rows):
            caption = f"SYNTHETIC DEMO caption {k}: {label}"
            if rng.random() < 0.1:
                caption += ', with "quotes", a comma\nand a line break'
            records.append(
                {
                    "caption": caption,
                    "image_path": image.name,
                    "subset": image.subset,
                    "split": image.split,
                    "pathology": image.pathology,
                    "roi_text": "['SYNTHETIC DEMO region']" if quilt else np.nan,
                    "noisy_text": caption.lower() if quilt else np.nan,
                    "corrected_text": caption if quilt else np.nan,
                    "med_umls_ids": "[['C0000000'], ['C0000001']]",
                    "magnification": image.magnification if quilt else np.nan,
                    "height": float(image.height) if has_size else np.nan,
                    "width": float(image.width) if has_size else np.nan,
                    "not_histology": int(image.kind == "not_histology"),
                    "single_wsi": int(rng.integers(0, 2)),
                }
            )
    for bad in ("../outside_root.jpg", "/etc/SYNTHETIC_DEMO_absolute.jpg", ""):
        records.append({**records[0], "image_path": bad, "caption": "SYNTHETIC DEMO bad path"})
    df = pd.DataFrame.from_records(records)
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    df.insert(0, "Unnamed: 0", np.arange(len(df)))
    return df[list(LOOKUP_COLUMNS)]


def reused_frame(
    image: Image.Image, rng: np.random.Generator, crop: tuple[float, float] | None, scale: tuple | None
) -> bytes:
    """A frame as a lecturer reuses it in another video (near-duplicate tests and benchmarks): crop a random non-empty set of sides (each by its own fraction of the side
    in ``crop``) or rescale by a log-uniform factor in ``scale``; then +-10 % gain per colour
    channel and JPEG quality 80-92. Returns the JPEG bytes."""
    w, h = image.size
    if crop:
        sides = rng.random(4) < 0.5
        sides[rng.integers(4)] = True
        left, top, right, bottom = np.where(sides, rng.uniform(*crop, 4), 0) * [w, h, w, h]
        image = image.crop((round(left), round(top), w - round(right), h - round(bottom)))
    if scale:
        factor = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
        image = image.resize((round(w * factor), round(h * factor)), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.9, 1.1, 3)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=int(rng.integers(80, 93)))
    return out.getvalue()
