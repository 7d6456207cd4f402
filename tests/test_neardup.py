"""Near-duplicate search: hash robustness on real tiles, exact neighbour search, union-find, and
near-copies under different video ids ending in one split (filters.near_duplicates)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from quiltflow.metadata import filter_metadata
from quiltflow.neardup import HASH_FLAT, HASH_OK, HASH_UNREADABLE, cluster_hashes, dhash_file, near_pairs, union_find
from quiltflow.settings import FilterSettings, SplitSettings
from quiltflow.splits import make_splits

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


def hashes_of(paths: list[Path]) -> np.ndarray:
    return np.array([dhash_file(p)[0] for p in paths], dtype=np.uint64)


def reference_dhash(path: Path) -> int:
    """The hash definition, spelled out with numpy: draft decode, grey, 9x8 BOX thumbnail, bit k
    (most significant first) = right neighbour brighter, rows top to bottom."""
    with Image.open(path) as image:
        image.draft("L", (64, 64))
        a = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return int.from_bytes(np.packbits((a[:, 1:] > a[:, :-1]).ravel()).tobytes(), "big")


def test_dhash_matches_its_definition_for_jpeg_and_other_modes(lc25000: Path, tmp_path: Path) -> None:
    tiles = sorted(lc25000.glob("*/*.jpeg"))[::20]
    source = Image.open(tiles[0]).convert("RGB").resize((512, 384))
    others = {"grey.jpg": source.convert("L"), "cmyk.jpg": source.convert("CMYK"), "rgb.png": source}
    others |= {
        "palette.png": source.convert("P"),
        "alpha.png": source.convert("LA"),
        "wide16.png": source.convert("I;16"),
    }
    for name, image in others.items():
        image.save(tmp_path / name)
    paths = tiles + [tmp_path / name for name in others]
    for path in paths:
        value, status = dhash_file(path)
        assert status == HASH_OK and value == reference_dhash(path), path


def test_near_pairs_is_exact_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for max_distance in (0, 3, 7, 9):
        hashes = rng.integers(0, 2**64 - 1, 1500, dtype=np.uint64, endpoint=True)
        for k in range(40):  # planted pairs at every distance up to the threshold
            bits = rng.choice(64, k % (max_distance + 1), replace=False)
            hashes[500 + k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in bits))
        a, b = near_pairs(hashes, max_distance)
        dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
        i, j = np.nonzero(np.triu(dist <= max_distance, 1))
        assert sorted(zip(a.tolist(), b.tolist())) == sorted(zip(i.tolist(), j.tolist()))


def test_union_find_roots_are_smallest_index() -> None:
    root = union_find(7, np.array([6, 4, 2, 5]), np.array([4, 2, 1, 3]))
    assert root.tolist() == [0, 1, 1, 3, 1, 3, 1]
    assert union_find(3, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == [0, 1, 2]


def test_cluster_hashes_joins_equal_and_near_and_skips_unhashed() -> None:
    hashes = np.array([0b1111, 0xFF00FF00, 0b1111, 0b0111, 0, 0], dtype=np.uint64)
    status = np.array([HASH_OK, HASH_OK, HASH_OK, HASH_OK, HASH_FLAT, HASH_UNREADABLE], dtype=np.int8)
    clusters = cluster_hashes(hashes, status, max_distance=1)
    assert clusters.root.tolist() == [0, 1, 0, 0, 4, 5]  # flat / unreadable images stay alone
    assert clusters.sizes.tolist() == [3, 1, 3, 3, 1, 1]


def test_unreadable_and_flat_files(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.new("RGB", (64, 64), (200, 120, 180)).save(tmp_path / "flat.jpg")
    assert dhash_file(tmp_path / "bad.jpg")[1] == HASH_UNREADABLE
    assert dhash_file(tmp_path / "missing.jpg")[1] == HASH_UNREADABLE
    assert dhash_file(tmp_path / "flat.jpg")[1] == HASH_FLAT


def test_real_tile_copies_are_near_and_different_tiles_are_not(lc25000: Path, tmp_path: Path) -> None:
    tiles = sorted(lc25000.glob("*/*.jpeg"))[::4]  # 150 tiles over the three classes
    rng = np.random.default_rng(0)
    copies = []
    for i, tile in enumerate(tiles):
        copies.append(tmp_path / f"copy{i}.jpg")
        copies[-1].write_bytes(near_copy(tile, rng))
    original, copied = hashes_of(tiles), hashes_of(copies)
    same = np.bitwise_count(original ^ copied)
    different = np.bitwise_count(original[:, None] ^ original[None, :])[np.triu_indices(len(tiles), 1)]
    print(f"copy distance percentiles 50/90/100: {np.percentile(same, [50, 90, 100])}")
    print(f"different-tile distance min / 0.1 %: {different.min()} / {np.percentile(different, 0.1)}")
    assert np.mean(same <= MAX_DISTANCE) >= 0.9
    assert np.mean(different <= MAX_DISTANCE) < 1e-3  # LC25000 itself holds a few true near-copies


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
    assert near["groups_merged"] == len(joined)
    manifests, _, _ = make_splits(table, SplitSettings.from_config({}, seed=0))
    split_of = {image: split for split, df in manifests.items() for image in df["image_id"]}
    assert all(split_of[a] == split_of[b] for a, b in joined)
