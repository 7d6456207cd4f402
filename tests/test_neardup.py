"""Near-duplicate detection: the K window hashes (definition, statuses), robustness on real tiles
(cropped 0-10 % of any sides, rescaled 0.5-2x, recoloured, re-encoded) against unrelated tiles,
the exact neighbour search against brute force, union-find, and near-copies under different video
ids ending in one split (filters.near_duplicates)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from quiltflow.core.settings import FilterSettings, SplitSettings
from quiltflow.data.demo import reused_frame
from quiltflow.data.metadata import filter_metadata
from quiltflow.data.neardup import (
    GRID,
    HASH_FLAT,
    HASH_OK,
    HASH_UNREADABLE,
    HASH_VERSION,
    HASHES_PER_IMAGE,
    WINDOWS,
    bits_of_thumbnails,
    cluster_hashes,
    cross_pairs,
    hash_file,
    hash_files,
    near_pairs,
    union_find,
    window_thumbnails,
)
from quiltflow.data.splits import make_splits

MAX_DISTANCE = FilterSettings.from_config({}).near_duplicate_distance


def near_copy(path: Path, rng: np.random.Generator) -> bytes:
    """A re-encoded, slightly cropped (0.5-1.5 % per side) and recoloured JPEG of ``path``."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    left, top = (int(rng.uniform(0.005, 0.015) * side) for side in (w, h))
    right, bottom = (int(rng.uniform(0.005, 0.015) * side) for side in (w, h))
    image = image.crop((left, top, w - right, h - bottom))
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.88, 1.12, 3) + rng.uniform(-12, 12)
    image = ImageEnhance.Color(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))).enhance(
        rng.uniform(0.85, 1.15)
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(70, 95)))
    return out.getvalue()


def joined_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance the detector compares: full frame of one image vs any hash of the other."""
    return np.minimum(np.bitwise_count(a[:, :1] ^ b).min(1), np.bitwise_count(b[:, :1] ^ a).min(1))


def reference_means(grey: np.ndarray) -> np.ndarray:
    """Exact area-weighted cell means of every window, spelled out with per-pixel coverage."""
    h, w = grey.shape
    out = []
    for x0, y0, x1, y1 in WINDOWS:
        xs = np.linspace(x0 * w, w - x1 * w, GRID + 1)
        ys = np.linspace(y0 * h, h - y1 * h, GRID + 1)
        cover_x = np.clip(np.minimum(np.arange(1, w + 1), xs[1:, None]) - np.maximum(np.arange(w), xs[:-1, None]), 0, 1)
        cover_y = np.clip(np.minimum(np.arange(1, h + 1), ys[1:, None]) - np.maximum(np.arange(h), ys[:-1, None]), 0, 1)
        out.append(cover_y @ grey @ cover_x.T / np.outer(cover_y.sum(1), cover_x.sum(1)))
    return np.array(out)


def reference_bits(thumb: np.ndarray) -> int:
    """The documented bit order of one thumbnail, as a plain loop."""
    bits = [thumb[r, c + 1] > thumb[r, c] for r in range(GRID) for c in range(GRID - 1)]
    bits += [thumb[r + 1, c] > thumb[r, c] for r in range(GRID - 1) for c in range(GRID)]
    bits += [thumb[0, 0] > thumb[5, 5], thumb[0, 5] > thumb[5, 0], thumb[2, 2] > thumb[3, 3], thumb[2, 3] > thumb[3, 2]]
    return int("".join("1" if b else "0" for b in bits), 2)


def test_hashes_match_their_definition_for_jpeg_and_other_modes(lc25000: Path, tmp_path: Path) -> None:
    assert HASHES_PER_IMAGE == len(WINDOWS) > 1 and WINDOWS[0] == (0, 0, 0, 0) and HASH_VERSION
    tiles = sorted(lc25000.glob("*/*.jpeg"))[::40]
    source = Image.open(tiles[0]).convert("RGB").resize((512, 384))
    others = {"grey.jpg": source.convert("L"), "cmyk.jpg": source.convert("CMYK"), "rgb.png": source}
    others |= {"palette.png": source.convert("P"), "alpha.png": source.convert("LA")}
    for name, image in others.items():
        image.save(tmp_path / name)
    for path in tiles + [tmp_path / name for name in others]:
        hashes, status = hash_file(path)
        with Image.open(path) as image:
            image.draft("L", (64, 64))
            grey = image.convert("L")
        thumbs = window_thumbnails(grey)
        assert status == HASH_OK and hashes.shape == (HASHES_PER_IMAGE,) and hashes.dtype == np.uint64, path
        assert np.abs(thumbs - reference_means(np.asarray(grey, dtype=np.float64))).max() <= 0.5 + 1e-6, path
        assert hashes.tolist() == [reference_bits(t) for t in thumbs], path
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 4, (50, GRID, GRID))  # many ties: ">" is strict
    assert bits_of_thumbnails(thumbs).tolist() == [reference_bits(t) for t in thumbs]


def test_hash_files_shapes_statuses_and_threads(lc25000: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.new("RGB", (64, 64), (200, 120, 180)).save(tmp_path / "flat.jpg")
    tiles = sorted(lc25000.glob("*/*.jpeg"))[::9]
    paths = [tmp_path / "bad.jpg", tmp_path / "missing.jpg", tmp_path / "flat.jpg", *tiles]
    hashes, status = hash_files(paths)
    assert hashes.shape == (len(paths), HASHES_PER_IMAGE) and hashes.dtype == np.uint64 and status.dtype == np.int8
    assert status[:3].tolist() == [HASH_UNREADABLE, HASH_UNREADABLE, HASH_FLAT] and (hashes[:3] == 0).all()
    assert (status[3:] == HASH_OK).all() and len(np.unique(hashes[3:, 0])) == len(tiles)
    threaded, threaded_status = hash_files(paths, threads=2)  # > 64 paths: really threaded
    assert np.array_equal(threaded, hashes) and np.array_equal(threaded_status, status)
    assert hash_files([])[0].shape == (0, HASHES_PER_IMAGE)


def test_reused_frames_of_real_tiles_are_joined_and_unrelated_tiles_are_not(lc25000: Path, tmp_path: Path) -> None:
    """Copies cropped 0-10 % of random sides or rescaled 0.5-2x (recoloured, JPEG 80-92) of 100
    real tiles re-encoded to 512x512; unrelated = all pairs of the originals."""
    rng = np.random.default_rng(3)
    bands = {"crop 0-3": ((0.0, 0.03), None), "crop 3-6": ((0.03, 0.06), None), "crop 6-10": ((0.06, 0.1), None)}
    bands |= {"scale 0.5-1": (None, (0.5, 1.0)), "scale 1-2": (None, (1.0, 2.0))}
    originals, copies = [], {name: [] for name in bands}
    for i, tile in enumerate(sorted(lc25000.glob("*/*.jpeg"))[::6]):
        image = Image.open(tile).convert("RGB").resize((512, 512), Image.Resampling.BICUBIC)
        originals.append(tmp_path / f"orig{i}.jpg")
        image.save(originals[-1], quality=90)
        for name, (crop, scale) in bands.items():
            copies[name].append(tmp_path / f"copy{i}_{len(copies[name])}_{name[:4]}{name[-1]}.jpg")
            copies[name][-1].write_bytes(reused_frame(image, rng, crop, scale))
    original = hash_files(originals)[0]
    recall = {
        name: float(np.mean(joined_distance(original, hash_files(files)[0]) <= MAX_DISTANCE))
        for name, files in copies.items()
    }
    i, j = np.triu_indices(len(original), 1)
    unrelated = joined_distance(original[i], original[j])
    print(f"recall at <= {MAX_DISTANCE} bits: {recall}; unrelated min distance {unrelated.min()}")
    minimum = {"crop 0-3": 0.8, "crop 3-6": 0.6, "crop 6-10": 0.4, "scale 0.5-1": 0.95, "scale 1-2": 0.95}
    assert all(recall[name] >= low for name, low in minimum.items()), recall
    assert np.mean(unrelated <= MAX_DISTANCE) < 1e-3  # LC25000 itself holds a few true near-copies


def planted_rows(rng: np.random.Generator, n: int, k: int, max_distance: int) -> np.ndarray:
    """Random (n, k) hashes where some rows' full hash is within the distance of another row's
    column (full-vs-window), some of another row's full hash, some far from everything."""
    hashes = rng.integers(0, 2**64 - 1, (n, k), dtype=np.uint64, endpoint=True)
    for _ in range(n // 3):
        src, dst = rng.integers(n, size=2)
        bits = rng.choice(64, int(rng.integers(0, max_distance + 2)), replace=False)  # some just too far
        hashes[dst, 0] = hashes[src, rng.integers(k)] ^ np.uint64(sum(1 << int(b) for b in bits))
    return hashes


def brute_force_roots(hashes: np.ndarray, status: np.ndarray, max_distance: int) -> list[int]:
    ok = status == HASH_OK
    d = np.bitwise_count(hashes[:, None, 0:1] ^ hashes[None, :, :]).min(axis=2)  # d[i, j]: full i vs any j
    near = (np.minimum(d, d.T) <= max_distance) & ok[:, None] & ok[None, :]
    i, j = np.nonzero(np.triu(near, 1))
    return union_find(len(hashes), i, j).tolist()


def test_cluster_hashes_is_exact_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for max_distance, n, k in [(0, 300, 3), (4, 400, 24), (5, 300, 24), (7, 300, 5), (9, 200, 1)]:
        hashes = planted_rows(rng, n, k, max_distance)
        hashes[:5] = hashes[5]  # a heap of identical images
        hashes[7:10, 2 % k] = hashes[11, 0]  # one window value held by several images
        status = np.where(rng.random(n) < 0.05, HASH_FLAT, HASH_OK).astype(np.int8)
        clusters = cluster_hashes(hashes, status, max_distance)
        assert clusters.root.tolist() == brute_force_roots(hashes, status, max_distance), (max_distance, k)


def test_near_and_cross_pairs_are_exact_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for max_distance in (0, 3, 4, 5, 7, 9):
        hashes = rng.integers(0, 2**64 - 1, 1500, dtype=np.uint64, endpoint=True)
        for k in range(40):  # planted pairs at every distance up to the threshold
            bits = rng.choice(64, k % (max_distance + 1), replace=False)
            hashes[500 + k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in bits))
        a, b = near_pairs(hashes, max_distance)
        dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
        i, j = np.nonzero(np.triu(dist <= max_distance, 1))
        assert sorted(zip(a.tolist(), b.tolist())) == sorted(zip(i.tolist(), j.tolist()))
        q, x = cross_pairs(hashes[:600], hashes[400:], max_distance)
        i, j = np.nonzero(dist[:600, 400:] <= max_distance)
        assert sorted(zip(q.tolist(), x.tolist())) == sorted(zip(i.tolist(), j.tolist()))


def test_union_find_roots_are_smallest_index() -> None:
    root = union_find(7, np.array([6, 4, 2, 5]), np.array([4, 2, 1, 3]))
    assert root.tolist() == [0, 1, 1, 3, 1, 3, 1]
    assert union_find(3, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == [0, 1, 2]


def test_cluster_hashes_joins_equal_and_near_and_skips_unhashed() -> None:
    hashes = np.array([0b1111, 0xFF00FF00, 0b1111, 0b0111, 0, 0], dtype=np.uint64)  # one hash per image
    status = np.array([HASH_OK, HASH_OK, HASH_OK, HASH_OK, HASH_FLAT, HASH_UNREADABLE], dtype=np.int8)
    clusters = cluster_hashes(hashes, status, max_distance=1)
    assert clusters.root.tolist() == [0, 1, 0, 0, 4, 5]  # flat / unreadable images stay alone
    assert clusters.sizes.tolist() == [3, 1, 3, 3, 1, 1]
    # Full frame of image 1 = a window of image 0 (a cropped copy); windows never meet windows.
    hashes = np.array([[0xF0, 0xFF00, 0xAAAA], [0xFF01, 0x1, 0x3], [0x5555_0000, 0x1, 0xAAAA]], dtype=np.uint64)
    clusters = cluster_hashes(hashes, np.zeros(3, dtype=np.int8), max_distance=1)
    assert clusters.root.tolist() == [0, 0, 2]
    assert cluster_hashes(np.zeros((0, HASHES_PER_IMAGE), np.uint64), np.zeros(0, np.int8), 4).root.tolist() == []


def write_quilt_lookup(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "subset", "pathology", "not_histology", "magnification", "height", "width"])
        for name, label in rows:
            writer.writerow([name, "quilt", repr([label]), 0, 1, 224, 224])
    return path


@pytest.mark.parametrize("mode", ["group", "drop", "off"])
def test_near_copies_under_other_videos_end_in_one_split(lc25000: Path, tmp_path: Path, mode: str) -> None:
    """Each real tile sits in its own video; for 12 of them a near-copy sits in another video."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(1)
    labels = {"lung_aca": "Pulmonary", "lung_n": "Breast", "lung_scc": "Renal"}  # any vocabulary names
    rows, pairs = [], []
    for i, tile in enumerate(sorted(lc25000.glob("*/*.jpeg"))[::10]):
        name = f"{'a' * 6}{i:05d}_image_orig.jpg"
        (root / name).write_bytes(tile.read_bytes())
        rows.append((name, labels[tile.parent.name]))
        if i % 5 == 0:
            copy = f"{'b' * 6}{i:05d}_image_copy.jpg"
            (root / copy).write_bytes(near_copy(tile, rng))
            rows.append((copy, labels[tile.parent.name]))
            pairs.append((name, copy))
    lookup = write_quilt_lookup(tmp_path / "lookup.csv", rows)
    filters = FilterSettings.from_config({"near_duplicates": mode})
    table, report = filter_metadata("quilt", lookup, root, filters, None, threads=2)
    near = report["near_duplicates"]
    print(near)
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    if mode == "off":
        assert near == {"mode": "off"} and len(table) == len(rows)
        return
    assert near["images_hashed"] == len(rows) and near["unreadable"] == 0
    assert near["clusters"] >= len(pairs) - 1  # a crop may rarely leave the threshold
    group_of = dict(zip(table["image_id"], table["group"]))
    joined = [(a, b) for a, b in pairs if mode == "group" and group_of[a] == group_of[b]]
    if mode == "drop":
        dropped = [b for _, b in pairs if b not in group_of]
        assert len(dropped) >= len(pairs) - 1 and report["dropped"]["near_duplicate"] == near["images_dropped"]
        return
    assert len(joined) >= len(pairs) - 1
    assert near["groups_merged"] == len({image for pair in joined for image in pair})  # videos: one per image here
    manifests, _, _ = make_splits(table, SplitSettings.from_config({}, seed=0))
    split_of = {image: split for split, df in manifests.items() for image in df["image_id"]}
    assert all(split_of[a] == split_of[b] for a, b in joined)
