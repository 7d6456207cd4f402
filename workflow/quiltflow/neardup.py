"""Near-duplicate images: a 64-bit difference hash per image and a non-quadratic neighbour search.

Lecturers reuse slide images across videos and the openpath/pubmed/laion subsets can repeat Quilt
frames, so grouping by video id alone lets near-identical images sit in train and test.
``filter_metadata`` hashes the images it keeps and joins those within ``max_distance`` bits.

* Hash: dHash (row-wise brightness gradient signs of a 9x8 box-averaged grey thumbnail) from a
  draft-mode JPEG decode (libjpeg's DCT scaling decodes 1/8 of the pixels of a 512x512 file).
  Images whose thumbnail is nearly flat are not compared: their bits are noise, and blank frames
  of unrelated videos would chain into one giant group.
* Search: multi-index hashing. The 64 bits are cut into 4 blocks of 16; two hashes within
  ``t`` bits differ in some block by at most ``t // 4`` bits (pigeonhole), so candidates come only
  from the buckets of each block's key and its few bit-flipped neighbours, never from all pairs.
* Join: union-find (roots are the smallest index, so clusters are deterministic).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

HASH_OK, HASH_UNREADABLE, HASH_FLAT = 0, 1, 2
FLAT_RANGE = 8  # grey levels: a thumbnail with a smaller max-min range is "flat"
MAX_HASH_PIXELS = 64_000_000  # after draft; larger non-JPEG files are not decoded here (shards skip bombs)
_BLOCK_BITS = 16
_BLOCKS = 64 // _BLOCK_BITS
_PAIR_CHUNK = 4_000_000  # candidate pairs generated at a time (memory bound)
_FIRST_FORMATS = ("JPEG",)


def dhash_image(image: Image.Image) -> tuple[int, int]:
    """(64-bit dHash, status) of an opened image; the draft decode happens here.

    Bit k (most significant first) is 1 where pixel (row, col + 1) > pixel (row, col) of the 9x8
    BOX-averaged grey thumbnail, rows top to bottom, columns left to right. For a colour JPEG,
    ``draft("L", ...)`` makes libjpeg decode luma only at 1/8 scale (DCT domain): no chroma
    upsampling, no colour conversion, no full-size IDCT; what remains is the entropy decoding of
    the file, which no decoder can skip (baseline JPEG interleaves DC and AC codes)."""
    image.draft("L", (64, 64))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, still >= 64 px
    if image.width * image.height > MAX_HASH_PIXELS:
        return 0, HASH_UNREADABLE
    if image.mode != "L":  # non-JPEG, CMYK or grey+alpha files; a colour JPEG is L after draft
        image = image.convert("L")
    thumb = image.resize((9, 8), Image.Resampling.BOX)
    low, high = thumb.getextrema()
    if high - low < FLAT_RANGE:
        return 0, HASH_FLAT
    px = thumb.tobytes()  # 72 bytes, row-major
    value = 0
    for row in range(0, 72, 9):  # plain ints: 64 comparisons cost less than numpy's call overhead
        for k in range(row, row + 8):
            value = (value << 1) | (px[k + 1] > px[k])
    return value, HASH_OK


def dhash_file(path: str | Path) -> tuple[int, int]:
    """(hash, status) of one file; any decode failure is HASH_UNREADABLE, never an exception.
    JPEG is tried first (Quilt's images are JPEG): Image.open skips probing the other formats."""
    try:
        try:
            image = Image.open(path, formats=_FIRST_FORMATS)
        except UnidentifiedImageError:
            image = Image.open(path)
        with image:
            return dhash_image(image)
    except Exception:  # noqa: BLE001 - truncated, corrupt, bomb, odd mode: all counted the same
        return 0, HASH_UNREADABLE


def _hash_chunk(paths: Sequence[str | Path]) -> list[tuple[int, int]]:
    return [dhash_file(p) for p in paths]


def hash_files(paths: Sequence[str | Path], threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, int8 status) per path, in order. Decoding and resizing release the GIL,
    so threads scale across cores without pickling anything."""
    if threads <= 1 or len(paths) < 64:
        results = _hash_chunk(paths)
    else:
        size = max(16, -(-len(paths) // (threads * 8)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quiltflow-dhash") as pool:
            results = list(itertools.chain.from_iterable(pool.map(_hash_chunk, chunks)))
    hashes = np.array([h for h, _ in results], dtype=np.uint64)
    status = np.array([s for _, s in results], dtype=np.int8)
    return hashes, status


# --------------------------------------------------------------------------- search


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root of each of ``n`` items after joining every pair (a[k], b[k]); a root is the smallest
    index of its component. Vectorised: link roots (larger under smaller), then pointer jumping."""
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            break
        lo, hi = np.minimum(ra[split], rb[split]), np.maximum(ra[split], rb[split])
        np.minimum.at(parent, hi, lo)  # parent[x] <= x always: no cycles
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        a, b = a[split], b[split]
    return parent


def _flip_masks(radius: int) -> list[int]:
    """Every 16-bit mask with at most ``radius`` bits set (0 first)."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << k for k in bits) for bits in itertools.combinations(range(_BLOCK_BITS), r)]
    return masks


def _block_pairs(keys: np.ndarray, masks: list[int], hashes: np.ndarray, max_distance: int):
    """Yield (i, j) arrays, i < j, of hashes within ``max_distance`` whose 16-bit ``keys`` differ by
    one of ``masks``; each pair is generated from one side only."""
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=1 << _BLOCK_BITS)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for mask in masks:
        # mask 0: every i queries its own bucket (i < j kept); other masks: only the side with
        # the lowest set bit of the mask clear queries, the other side would find the same pair.
        low_bit = mask & -mask
        queries = np.flatnonzero((keys & low_bit) == 0) if mask else np.arange(len(keys))
        c = counts[keys[queries] ^ mask]
        total = np.cumsum(c)
        cuts = np.searchsorted(total, np.arange(_PAIR_CHUNK, int(total[-1]) if len(c) else 0, _PAIR_CHUNK))
        for q in np.split(np.arange(len(queries)), cuts):
            if not len(q):
                continue
            cq = c[q]
            i = np.repeat(queries[q], cq)
            offset = np.arange(len(i)) - np.repeat(np.cumsum(cq) - cq, cq)
            j = order[np.repeat(starts[keys[queries[q]] ^ mask], cq) + offset]
            near = (i < j) if mask == 0 else (i != j)
            near &= np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance
            yield np.minimum(i[near], j[near]), np.maximum(i[near], j[near])


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) of distinct ``hashes`` within ``max_distance`` bits (exact: the
    pigeonhole argument misses none). Expected work ~ n^2 * 4 * |masks| / 65536 for random hashes,
    i.e. about n * 170 candidates at n = 650k, distance <= 7, instead of n^2 / 2."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    masks = _flip_masks(max_distance // _BLOCKS)
    found_a: list[np.ndarray] = []
    found_b: list[np.ndarray] = []
    for block in range(_BLOCKS):
        keys = ((hashes >> np.uint64(block * _BLOCK_BITS)) & np.uint64(0xFFFF)).astype(np.int64)
        for a, b in _block_pairs(keys, masks, hashes, max_distance):
            found_a.append(a)
            found_b.append(b)
    if not found_a:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.unique(np.stack([np.concatenate(found_a), np.concatenate(found_b)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


@dataclass
class Clusters:
    """Near-duplicate clusters of a list of images (index = position in that list)."""

    root: np.ndarray  # int64: smallest index of the image's cluster (itself when alone or not hashed)
    status: np.ndarray  # int8 HASH_* per image

    @property
    def sizes(self) -> np.ndarray:
        """Size of each image's cluster."""
        return np.bincount(self.root, minlength=len(self.root))[self.root]


def cluster_hashes(hashes: np.ndarray, status: np.ndarray, max_distance: int) -> Clusters:
    """Join hashed images (status HASH_OK) within ``max_distance`` bits. Equal hashes are joined
    first in one pass, so a heap of identical frames never reaches the pairwise search."""
    ok = np.flatnonzero(status == HASH_OK)
    unique, first, inverse = np.unique(hashes[ok], return_index=True, return_inverse=True)
    a, b = near_pairs(unique, max_distance)
    unique_root = union_find(len(unique), a, b)
    # Map unique-hash roots back to image indices: an image's root is the smallest image index
    # of its component (np.unique's first index is the smallest of each hash).
    component_min = np.full(len(unique), len(ok), dtype=np.int64)
    np.minimum.at(component_min, unique_root, first)
    root = np.arange(len(hashes), dtype=np.int64)
    root[ok] = ok[component_min[unique_root[inverse.ravel()]]]
    return Clusters(root=root, status=status)
