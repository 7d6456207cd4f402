"""Synthetic demo: deterministic, Quilt-shaped, dirty enough for each filter, not colour-trivial."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from quiltflow.core.errors import UserError
from quiltflow.core.settings import FilterSettings
from quiltflow.data.demo import DEFAULT_CLASSES, LOOKUP_COLUMNS, _video_stain, generate_demo, render_tile, tissue_style
from quiltflow.data.lookup import SUBSPECIALTIES
from quiltflow.data.metadata import DROP_REASONS, filter_metadata
from scipy import ndimage


def filtered(lookup: Path, images: Path, filters: dict) -> tuple[pd.DataFrame, dict]:
    """The demo through filter_metadata with a partial ``filters`` section (the schema fills in)."""
    return filter_metadata("quilt", lookup, images, FilterSettings.from_config(filters), None)


def make(tmp_path: Path, name: str = "d", seed: int = 0, **kw) -> tuple[Path, Path, dict]:
    args = {"images_per_class": 8, "tile_size": 32, **kw}
    lookup, images = tmp_path / name / "quilt_1M_lookup.csv", tmp_path / name / "images"
    return lookup, images, generate_demo(lookup, images, seed=seed, **args)


def test_deterministic_from_seed(tmp_path: Path) -> None:
    la, ia, sa = make(tmp_path, "a", seed=3)
    lb, ib, sb = make(tmp_path, "b", seed=3)
    lc, ic, _ = make(tmp_path, "c", seed=4)
    assert sa == sb
    assert la.read_bytes() == lb.read_bytes()
    names = sorted(p.name for p in ia.iterdir())
    assert names == sorted(p.name for p in ib.iterdir())
    assert all((ia / n).read_bytes() == (ib / n).read_bytes() for n in names)
    assert la.read_bytes() != lc.read_bytes()


def test_lookup_looks_like_quilt(tmp_path: Path) -> None:
    lookup, images, summary = make(tmp_path)
    df = pd.read_csv(lookup)
    assert tuple(df.columns) == LOOKUP_COLUMNS
    assert df["caption"].str.contains("SYNTHETIC DEMO").all()
    assert set(df["subset"]) == {"quilt", "openpath", "pubmed", "laion"}
    assert set(df["split"]) <= {"train", "val"}
    assert df.loc[df["subset"] != "quilt", "magnification"].isna().all()
    assert set(df.loc[df["subset"] == "quilt", "magnification"].dropna()) <= {0.0, 1.0, 2.0}
    assert df["image_path"].nunique() < len(df)  # several captions per image
    vids = df.loc[df["subset"] == "quilt", "image_path"].str.extract(r"^(.{11})_image_")[0].dropna()
    assert vids.str.startswith("_").any() and vids.str.startswith("-").any()
    assert vids.str.contains("_image_").any()
    labels = {eval(p)[0] for p in df["pathology"].dropna() if re.fullmatch(r"\[('[^']+'(, )?)+\]", p)}
    assert set(DEFAULT_CLASSES) <= labels <= set(SUBSPECIALTIES)
    assert summary["rows"] == len(df)
    # Varied source sizes (larger, non-square) and a few unreadable files.
    sizes = {Image.open(p).size for p in images.iterdir() if _readable(p)}
    assert len(sizes) >= 3 and any(w != h for w, h in sizes)
    assert summary["corrupt_files"] >= 3 and sum(not _readable(p) for p in images.iterdir()) == summary["corrupt_files"]
    assert any(p.stat().st_size == 0 for p in images.iterdir())


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def test_demo_exercises_every_filter_reason(tmp_path: Path) -> None:
    lookup, images, _ = make(tmp_path)
    seen: set[str] = set()
    for filters in (
        {},
        {
            "subsets": ["quilt", "openpath", "pubmed"],
            "magnifications": [1, 2],
            "min_image_side": 32,
        },
        {"exclude_classes": ["Breast"], "min_per_class": 4, "top_k_classes": 3},
    ):
        table, report = filtered(lookup, images, filters)
        assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
        seen |= set(report["dropped"])
    # not_image_file is folder-format only; the others need a column or vocabulary the demo keeps neutral.
    assert seen == set(DROP_REASONS) - {"not_image_file", "single_wsi", "label_not_in_vocabulary", "near_duplicate"}
    table, report = filtered(lookup, images, {"min_per_class": 4})
    assert sorted(report["class_counts"]) == sorted(DEFAULT_CLASSES)
    assert report["dropped"]["class_too_small"] >= 3  # the tiny tail class


def test_custom_classes_and_bad_params(tmp_path: Path) -> None:
    lookup, images, summary = make(tmp_path, classes=["Renal", "Bone", "Head and Neck"])
    table, report = filtered(lookup, images, {"min_per_class": 4})
    assert sorted(report["class_counts"]) == ["Bone", "Head and Neck", "Renal"]
    for bad in (
        {"classes": ["Renal"]},
        {"classes": ["Renal", "Renal"]},
        {"images_per_class": 2},
        {"tile_size": 8},
    ):
        with pytest.raises(UserError):
            make(tmp_path, "bad", **bad)


def test_render_tile_shapes_and_stain_range() -> None:
    rng = np.random.default_rng(0)
    tile = render_tile(rng, tissue_style("Hematopathology"), _video_stain(rng), 40, 56)
    assert tile.shape == (40, 56, 3) and tile.dtype == np.uint8
    # H&E-like: pinkish/purple, not grey: red and blue above green on average.
    r, g, b = tile.reshape(-1, 3).mean(0)
    assert r > g and b > g


def _texture(gray: np.ndarray) -> list[float]:
    """Colour-blind structure features: dark-blob counts and sizes, lumen area, edge energy."""
    z = (gray - gray.mean()) / (gray.std() + 1e-6)
    dark = z < -1.0
    _, n_blobs = ndimage.label(dark)
    grad = np.hypot(*np.gradient(z))
    return [
        dark.mean(),
        (z > 1.5).mean(),
        n_blobs / z.size * 1e3,
        dark.sum() / max(n_blobs, 1),
        grad.mean(),
        np.abs(ndimage.laplace(z)).mean(),
    ]


def test_not_separable_by_mean_colour(tmp_path: Path) -> None:
    """Per-video stain shifts overlap across classes: mean RGB is far worse than texture."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lookup, images, _ = make(tmp_path, seed=2, images_per_class=30, tile_size=96)
    table, _ = filtered(lookup, images, {"min_per_class": 5})
    colour, texture, y, groups = [], [], [], []
    for row in table.itertuples():
        path = images / row.image_id
        if not _readable(path):
            continue
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        colour.append(rgb.reshape(-1, 3).mean(0))
        texture.append(_texture(rgb.mean(2)))
        y.append(row.label)
        groups.append(row.group)
    scores = {}
    for name, x in (("colour", colour), ("texture", texture)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        # Grouped by video: a classifier may not recognise the video's stain instead of the class.
        scores[name] = cross_val_score(clf, np.array(x), y, groups=groups, cv=GroupKFold(4)).mean()
    chance = 1 / len(DEFAULT_CLASSES)
    assert scores["colour"] < chance + 0.3, scores
    assert scores["texture"] > scores["colour"] + 0.15, scores
