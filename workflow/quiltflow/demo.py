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
import uuid
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from quiltflow.errors import UserError
from quiltflow.metadata import SUBSPECIALTIES

log = logging.getLogger("quiltflow.demo")

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


def render_tile(
    rng: np.random.Generator, style: TissueStyle, stain: Stain, h: int, w: int
) -> np.ndarray:
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
    fibre = np.sin(2 * np.pi * phase) * (
        0.5 + 0.5 * _smooth_noise(rng, h, w, max(4, int(10 * scale)))
    )
    eosin = (
        style.eosin * (1.0 + style.fibre_amp * fibre) * (1 + 0.15 * _smooth_noise(rng, h, w, 32))
    )
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
    od = (
        hema[..., None] * stain.hema_gain * stain.hema_vec
        + eos[..., None] * stain.eosin_gain * stain.eosin_vec
    )
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


def _pathology(rng: np.random.Generator, primary: str) -> str:
    others = [s for s in SUBSPECIALTIES if s != primary]
    extra = list(rng.choice(others, int(rng.integers(0, 3)), replace=False))
    return repr([primary, *map(str, extra)])


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
    if (
        len(classes) < 2
        or len(set(classes)) != len(classes)
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise UserError(f"demo.classes={classes!r}: expected at least two distinct class names")
    if TAIL_CLASS in classes:
        raise UserError(f"demo.classes: {TAIL_CLASS!r} is reserved for the demo's tiny tail class")
    if (
        isinstance(images_per_class, bool)
        or not isinstance(images_per_class, int)
        or images_per_class < 4
    ):
        raise UserError(f"demo.images_per_class={images_per_class!r}: expected an integer >= 4")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or not 32 <= tile_size <= 1024:
        raise UserError(f"demo.tile_size={tile_size!r}: expected an integer in [32, 1024]")
    lookup_path, image_dir = Path(lookup_path), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    lookup_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    images: list[dict[str, Any]] = []  # one per image file (or missing file)

    def new_image(
        name: str,
        subset: str,
        pathology: Any,
        split: str,
        kind: str,
        style: TissueStyle | None,
        stain: Stain | None,
        mag: float = np.nan,
    ) -> None:
        h, w = _tile_shape(rng, tile_size)
        images.append(
            dict(
                name=name,
                subset=subset,
                pathology=pathology,
                split=split,
                kind=kind,
                style=style,
                stain=stain,
                mag=mag,
                h=h,
                w=w,
            )
        )

    def uid() -> str:
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))

    n_videos = max(4, round(images_per_class / 8))  # >= 4 so small classes reach every split
    vids = _video_ids(rng, n_videos * len(classes))
    n_other = max(1, images_per_class // 12)  # openpath/pubmed single images per class
    first_videos: list[tuple[str, str, str, Stain, TissueStyle]] = []  # one per class, for dirt
    for ci, cls in enumerate(classes):
        videos = []
        for vid in vids[ci * n_videos : (ci + 1) * n_videos]:
            split = "val" if rng.random() < 0.15 else "train"
            videos.append(
                (
                    vid,
                    _pathology(rng, cls),
                    split,
                    _video_stain(rng),
                    _video_style(rng, tissue_style(cls)),
                )
            )
        first_videos.append(videos[0])
        n_quilt = images_per_class - n_other
        per_video = rng.multinomial(n_quilt - n_videos, np.ones(n_videos) / n_videos) + 1
        for (vid, path, split, stain, style), k in zip(videos, per_video):
            for _ in range(k):
                new_image(
                    f"{vid}_image_{uid()}.jpg",
                    "quilt",
                    path,
                    split,
                    "tile",
                    style,
                    stain,
                    float(rng.integers(0, 3)),
                )
        for j in range(n_other):
            subset = "openpath" if j % 2 == 0 else "pubmed"
            new_image(
                f"{subset}_{rng.bytes(6).hex()}.jpg",
                subset,
                repr([cls]),
                "train",
                "tile",
                _video_style(rng, tissue_style(cls)),
                _video_stain(rng),
            )
    # Dirt, spread over the classes.
    n_dirt = max(2, len(classes) * images_per_class // 40)
    for j in range(n_dirt):
        vid, path, split, _, _ = first_videos[j % len(first_videos)]
        new_image(
            f"{vid}_image_{uid()}.jpg", "quilt", path, split, "not_histology", None, None, 1.0
        )
        new_image(f"{vid}_image_{uid()}.jpg", "quilt", path, split, "missing", None, None, 1.0)
    for j, kind in enumerate(("truncated", "zero_byte", "not_jpeg", "truncated")):
        vid, path, split, stain, style = first_videos[(j + 1) % len(first_videos)]
        new_image(f"{vid}_image_{uid()}.jpg", "quilt", path, split, kind, style, stain, 2.0)
    for j in range(n_dirt):
        new_image(
            f"openpath_{rng.bytes(6).hex()}.jpg",
            "openpath",
            repr([classes[j % len(classes)]]),
            "train",
            "missing",
            None,
            None,
        )
    for bad in ("['Renal', 'Pulmonary'", "Renal; Bone", "[Renal]", "['Bone', 3]"):
        new_image(
            f"pubmed_{rng.bytes(6).hex()}.jpg",
            "pubmed",
            bad,
            "train",
            "tile",
            tissue_style(classes[0]),
            _video_stain(rng),
        )
    for j in range(3):
        new_image(
            f"laion_{rng.bytes(6).hex()}.jpg",
            "laion",
            np.nan if j else "[]",
            "train",
            "tile",
            tissue_style(classes[j % len(classes)]),
            _video_stain(rng),
        )
    for j in range(3):
        new_image(
            f"pubmed_{rng.bytes(6).hex()}.jpg",
            "pubmed",
            repr([TAIL_CLASS]),
            "train",
            "tile",
            tissue_style(TAIL_CLASS),
            _video_stain(rng),
        )

    # Write the files: tiles are vectorised numpy, one JPEG encode each.
    counts = {"tiles": 0, "not_histology": 0, "corrupt": 0, "missing": 0}
    for im in images:
        path = image_dir / im["name"]
        kind = im["kind"]
        if kind == "missing":
            path.unlink(missing_ok=True)
            counts["missing"] += 1
            continue
        if kind == "not_histology":
            data = _jpeg(_not_histology_tile(rng, im["h"], im["w"]))
            counts["not_histology"] += 1
        elif kind in ("truncated", "zero_byte", "not_jpeg"):
            full = _jpeg(render_tile(rng, im["style"], im["stain"], im["h"], im["w"]))
            data = {
                "truncated": full[: len(full) // 3],
                "zero_byte": b"",
                "not_jpeg": b"SYNTHETIC DEMO: not a JPEG\n",
            }[kind]
            counts["corrupt"] += 1
        else:
            data = _jpeg(render_tile(rng, im["style"], im["stain"], im["h"], im["w"]))
            counts["tiles"] += 1
        path.write_bytes(data)

    rows = _lookup_rows(rng, images)
    rows.to_csv(lookup_path, index=False, float_format="%.1f")
    summary = {
        "seed": seed,
        "classes": classes,
        "videos": len(vids),
        "images": len(images),
        "rows": len(rows),
        "tiles": counts["tiles"],
        "not_histology_images": counts["not_histology"],
        "corrupt_files": counts["corrupt"],
        "missing_images": counts["missing"],
        "other_subset_rows": int((rows["subset"] != "quilt").sum()),
    }
    log.info("synthetic demo: %s", summary)
    return summary


def _lookup_rows(rng: np.random.Generator, images: list[dict[str, Any]]) -> pd.DataFrame:
    """1-4 caption rows per image plus three bad-path rows, shuffled; all 15 Quilt columns."""
    records = []
    for im in images:
        n_rows = int(rng.choice([1, 1, 2, 2, 3, 4]))
        label = "tissue" if im["style"] else "slide"
        for k in range(n_rows):
            caption = f"SYNTHETIC DEMO caption {k}: {label}"
            if rng.random() < 0.1:
                caption += ', with "quotes", a comma\nand a line break'
            quilt = im["subset"] == "quilt"
            records.append(
                {
                    "caption": caption,
                    "image_path": im["name"],
                    "subset": im["subset"],
                    "split": im["split"],
                    "pathology": im["pathology"],
                    "roi_text": "['SYNTHETIC DEMO region']" if quilt else np.nan,
                    "noisy_text": caption.lower() if quilt else np.nan,
                    "corrected_text": caption if quilt else np.nan,
                    "med_umls_ids": "[['C0000000'], ['C0000001']]",
                    "magnification": im["mag"] if quilt else np.nan,
                    "height": float(im["h"]) if im["kind"] != "missing" or quilt else np.nan,
                    "width": float(im["w"]) if im["kind"] != "missing" or quilt else np.nan,
                    "not_histology": int(im["kind"] == "not_histology"),
                    "single_wsi": int(rng.integers(0, 2)),
                }
            )
    for bad in ("../outside_root.jpg", "/etc/SYNTHETIC_DEMO_absolute.jpg", ""):
        records.append({**records[0], "image_path": bad, "caption": "SYNTHETIC DEMO bad path"})
    df = pd.DataFrame.from_records(records)
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    df.insert(0, "Unnamed: 0", np.arange(len(df)))
    return df[list(LOOKUP_COLUMNS)]
