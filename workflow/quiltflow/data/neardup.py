"""Near-duplicate images, robust to re-framing: several 64-bit gradient hashes per image (the full
frame and inner windows) and a non-quadratic neighbour search.

Lecturers reuse slide images across videos, often re-framed (cropped by a few % of a side) or
rescaled, and the openpath/pubmed/laion subsets can repeat Quilt frames, so grouping by video id
alone lets near-identical images sit in train and test. ``filter_metadata`` hashes the images it
keeps and joins those within ``max_distance`` bits.

* Hash: a draft-mode JPEG decode (libjpeg's DCT scaling decodes luma only, 1/8 of the pixels of a
  512x512 file), then for each of ``HASHES_PER_IMAGE`` windows (``WINDOWS``: column 0 is the full
  frame, the others crop 2.5-10 % off some sides) a 6x6 BOX-averaged grey thumbnail of that window
  and 64 bits: 30 horizontal and 30 vertical neighbour comparisons plus 4 across the centre. A
  6x6 grid (cells of 1/6 of a side) moves less under a crop than the 9x8 dHash it replaces; the
  windows were picked greedily, on random crops of half of the real LC25000 tiles, to cover
  crops of 0-10 % of any sides. Images whose full-frame thumbnail is nearly flat are not
  compared: their bits are noise, and blank frames of unrelated videos would chain into one
  giant group.
* Comparison: image A's full-frame hash (column 0) against every hash of image B, and B's
  against A's. A copy cropped by (l, t, r, b) shows what one of the original's windows shows, so
  its full-frame hash meets that window's hash; a rescaled copy keeps the same full-frame hash.
  Windows are never compared with windows (more chance matches, no more coverage).
* Search: multi-index hashing. The 64 bits are cut into ``b`` blocks; two hashes within ``t``
  bits differ in some block by at most ``t // b`` bits (pigeonhole), so candidates come only from
  the buckets of each block's key and its few bit-flipped neighbours, never from all pairs. ``b``
  follows a cost model (3 blocks of 21-22 bits for full-frame queries against all K hashes at
  ``t = 4`` or ``5``: about as many candidates as one hash per image with 4 x 16 bits at
  ``t = 7``; 650k images x 24 hashes take ~25 s on one core).
* Threshold (``filters.near_duplicate_distance``, default 4): each pair of images is compared
  2K - 1 times, so the threshold sits below the single dHash's 7 to keep chance matches as rare
  (docs/benchmarks.md, "Near-duplicate detection").
* Join: union-find (roots are the smallest index, so clusters are deterministic).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

HASH_OK, HASH_UNREADABLE, HASH_FLAT = 0, 1, 2
FLAT_RANGE = 8  # grey levels: a full-frame thumbnail with a smaller max-min range is "flat"
MAX_HASH_PIXELS = 64_000_000  # after draft; larger non-JPEG files are not decoded here (shards skip bombs)
GRID = 6  # thumbnail side: 30 + 30 neighbour bits + 4 centre bits = 64
# (left, top, right, bottom) fractions cropped off the frame, in greedy order (each window added
# the most crops not yet within 5 bits; the first is the full frame).
WINDOWS = (
    (0, 0, 0, 0),
    (0.075, 0, 0, 0),
    (0, 0.075, 0, 0),
    (0.025, 0, 0.05, 0),
    (0, 0.025, 0, 0.075),
    (0, 0.05, 0.075, 0),
    (0.05, 0.05, 0.025, 0),
    (0.025, 0, 0.05, 0.075),
    (0.05, 0, 0.025, 0.025),
    (0.025, 0.05, 0.05, 0.05),
    (0.075, 0.075, 0, 0),
    (0.05, 0.075, 0.075, 0),
    (0, 0, 0.075, 0),
    (0, 0.075, 0, 0.05),
    (0.075, 0, 0, 0.075),
    (0.05, 0.025, 0.075, 0.05),
    (0.075, 0.025, 0.025, 0.025),
    (0, 0, 0.075, 0.05),
    (0.075, 0, 0.075, 0),
    (0.075, 0.025, 0, 0),
    (0, 0.075, 0.025, 0.025),
    (0.05, 0.075, 0, 0.075),
    (0, 0.075, 0.075, 0.05),
    (0.1, 0, 0, 0.025),
)
HASHES_PER_IMAGE = len(WINDOWS)
HASH_VERSION = f"grad6x6-win{HASHES_PER_IMAGE}-v1"
_CENTRE = (np.array([0, 0, 2, 2]), np.array([0, 5, 2, 3]), np.array([5, 5, 3, 3]), np.array([5, 0, 3, 2]))
_PAIR_CHUNK = 4_000_000  # candidate pairs generated at a time (memory bound)
_FIRST_FORMATS = ("JPEG",)
_NO_HASHES = np.zeros(HASHES_PER_IMAGE, dtype=np.uint64)


def bits_of_thumbnails(thumbs: np.ndarray) -> np.ndarray:
    """uint64 hash of each GRID x GRID grey thumbnail of ``thumbs`` (shape (k, GRID, GRID)).

    Bits, most significant first: 30 horizontal (pixel (row, col + 1) > pixel (row, col), rows
    top to bottom, columns left to right), 30 vertical ((row + 1, col) > (row, col), same order),
    then (0, 0) > (5, 5), (0, 5) > (5, 0), (2, 2) > (3, 3), (2, 3) > (3, 2)."""
    a = np.asarray(thumbs, dtype=np.int16)
    k = len(a)
    bits = np.concatenate(
        [
            (a[:, :, 1:] > a[:, :, :-1]).reshape(k, -1),
            (a[:, 1:, :] > a[:, :-1, :]).reshape(k, -1),
            a[:, _CENTRE[0], _CENTRE[1]] > a[:, _CENTRE[2], _CENTRE[3]],
        ],
        axis=1,
    )
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


@functools.lru_cache(maxsize=32)
def _window_grid(width: int, height: int) -> tuple[np.ndarray, ...]:
    """Cell edges of every window of a ``width`` x ``height`` image, as integer pixel + fraction
    (x: (K, GRID + 1), y: (K, GRID + 1, 1)), and the area of one cell per window (K, 1, 1)."""
    win = np.array(WINDOWS, dtype=np.float64)
    steps = np.linspace(0, 1, GRID + 1)
    xs = width * (win[:, :1] + steps * (1 - win[:, :1] - win[:, 2:3]))
    ys = height * (win[:, 1:2] + steps * (1 - win[:, 1:2] - win[:, 3:4]))
    xi, yi = np.minimum(xs.astype(np.int64), width - 1), np.minimum(ys.astype(np.int64), height - 1)
    area = (xs[:, 1] - xs[:, 0]) * (ys[:, 1] - ys[:, 0])
    return xi, xs - xi, yi[:, :, None], (ys - yi)[:, :, None], area[:, None, None]


def window_thumbnails(image: Image.Image) -> np.ndarray:
    """(K, GRID, GRID) grey means (rounded to integers, like a BOX resize) of the cells of the
    WINDOWS of a grey image. One integral image serves all windows: a cell's exact (area-weighted)
    sum is the integral image, interpolated bilinearly, at its 4 corners; 24 Pillow resizes of
    the same 64x64 draft cost about 4x more."""
    width, height = image.size
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = np.asarray(image, dtype=np.float64).cumsum(0).cumsum(1)
    xi, fx, yi, fy, area = _window_grid(width, height)
    cols = integral[:, xi] * (1 - fx) + integral[:, xi + 1] * fx  # (height + 1, K, GRID + 1)
    k = np.arange(HASHES_PER_IMAGE)[:, None]
    corners = cols[yi[:, :, 0], k] * (1 - fy) + cols[yi[:, :, 0] + 1, k] * fy  # (K, GRID + 1, GRID + 1)
    return np.rint(np.diff(np.diff(corners, axis=1), axis=2) / area)


def hash_image(image: Image.Image) -> tuple[np.ndarray, int]:
    """(K uint64 hashes, status) of an opened image; the draft decode happens here.

    For a colour JPEG, ``draft("L", ...)`` makes libjpeg decode luma only at 1/8 scale (DCT
    domain): no chroma upsampling, no colour conversion, no full-size IDCT; what remains is the
    entropy decoding of the file, which no decoder can skip, and which costs more than all K
    thumbnails together (a window of a 64x64 draft still averages >= 8x8 pixels per cell)."""
    image.draft("L", (64, 64))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, still >= 64 px
    if image.width * image.height > MAX_HASH_PIXELS:
        return _NO_HASHES.copy(), HASH_UNREADABLE
    if image.mode != "L":  # non-JPEG, CMYK or grey+alpha files; a colour JPEG is L after draft
        image = image.convert("L")
    thumbs = window_thumbnails(image)
    if int(thumbs[0].max()) - int(thumbs[0].min()) < FLAT_RANGE:
        return _NO_HASHES.copy(), HASH_FLAT
    return bits_of_thumbnails(thumbs), HASH_OK


def hash_file(path: str | Path) -> tuple[np.ndarray, int]:
    """(K hashes, status) of one file; any decode failure is HASH_UNREADABLE, never an exception.
    JPEG is tried first (Quilt's images are JPEG): Image.open skips probing the other formats."""
    try:
        try:
            image = Image.open(path, formats=_FIRST_FORMATS)
        except UnidentifiedImageError:
            image = Image.open(path)
        with image:
            return hash_image(image)
    except Exception:  # noqa: BLE001 - truncated, corrupt, bomb, odd mode: all counted the same
        return _NO_HASHES.copy(), HASH_UNREADABLE


def _hash_chunk(paths: Sequence[str | Path]) -> list[tuple[np.ndarray, int]]:
    return [hash_file(p) for p in paths]


def hash_files(paths: Sequence[str | Path], threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes of shape (n, K), int8 status of shape (n,)) per path, in order. Decoding and
    resizing release the GIL, so threads scale across cores without pickling anything."""
    if threads <= 1 or len(paths) < 64:
        results = _hash_chunk(paths)
    else:
        size = max(16, -(-len(paths) // (threads * 8)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quiltflow-hash") as pool:
            results = list(itertools.chain.from_iterable(pool.map(_hash_chunk, chunks)))
    hashes = np.zeros((len(results), HASHES_PER_IMAGE), dtype=np.uint64)
    for row, (values, _) in enumerate(results):
        hashes[row] = values
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


def _block_widths(max_distance: int, n_queries: int, n_index: int) -> list[int]:
    """Block widths (summing to 64) of the cheapest pigeonhole split: per block, every query probes
    each key within ``max_distance // blocks`` flipped bits (a probe ~ one unit of work) and meets
    the index entries of those buckets (random keys: n_index / 2**width each)."""
    best, best_cost = [16] * 4, math.inf
    for blocks in range(3, 9):  # keys of <= 22 bits: bucket tables of <= 4M entries
        widths = [64 // blocks + (k < 64 % blocks) for k in range(blocks)]
        radius = max_distance // blocks
        probes = sum(math.comb(widths[0], r) for r in range(radius + 1))
        cost = blocks * probes * n_queries * (1 + n_index / 2.0 ** widths[-1])
        if cost < best_cost:
            best, best_cost = widths, cost
    return best


def _flip_masks(width: int, radius: int) -> Iterator[int]:
    """Every ``width``-bit mask with at most ``radius`` bits set (0 first)."""
    for r in range(radius + 1):
        for bits in itertools.combinations(range(width), r):
            yield sum(1 << k for k in bits)


def _probe(q_keys: np.ndarray, counts: np.ndarray, starts: np.ndarray, mask: int, queries: np.ndarray):
    """Yield (query index, position in key order) of every index entry whose key is a query's key
    xor ``mask`` (bucket ``counts`` and ``starts`` by key), at most _PAIR_CHUNK at a time."""
    probe = q_keys[queries] ^ mask
    start, count = starts[probe], counts[probe]
    total = np.cumsum(count)
    cuts = np.searchsorted(total, np.arange(_PAIR_CHUNK, int(total[-1]) if len(total) else 0, _PAIR_CHUNK))
    for part in np.split(np.arange(len(queries)), cuts):
        c = count[part]
        if not c.sum():
            continue
        offset = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        yield np.repeat(queries[part], c), np.repeat(start[part], c) + offset


def _search(queries: np.ndarray, index: np.ndarray | None, max_distance: int) -> Iterator[tuple]:
    """Yield (i, j) arrays: ``queries[i]`` within ``max_distance`` bits of ``index[j]``. With
    ``index`` None, a self-join of ``queries``, each pair once with i < j: a pair at flip mask
    m > 0 is generated only from the side whose block key has m's lowest set bit clear."""
    self_join = index is None
    index = queries if self_join else index
    widths = _block_widths(max_distance, len(queries), len(index) // (2 if self_join else 1))
    shift = 0
    for width in widths:
        key_mask = np.uint64((1 << width) - 1)
        q_keys = ((queries >> np.uint64(shift)) & key_mask).astype(np.int64)
        x_keys = q_keys if self_join else ((index >> np.uint64(shift)) & key_mask).astype(np.int64)
        shift += width
        order = np.argsort(x_keys, kind="stable")
        counts = np.bincount(x_keys, minlength=1 << width)
        starts = np.cumsum(counts) - counts
        everyone = np.arange(len(queries))
        for mask in _flip_masks(width, max_distance // len(widths)):
            side = np.flatnonzero((q_keys & (mask & -mask)) == 0) if self_join and mask else everyone
            for i, pos in _probe(q_keys, counts, starts, mask, side):
                j = order[pos]
                near = np.bitwise_count(queries[i] ^ index[j]) <= max_distance
                if self_join:
                    near &= (i < j) if mask == 0 else (i != j)
                    yield np.minimum(i[near], j[near]), np.maximum(i[near], j[near])
                else:
                    yield i[near], j[near]


def _unique_pairs(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.unique(
        np.stack([np.concatenate([a for a, _ in found]), np.concatenate([b for _, b in found])], 1), axis=0
    )
    return pairs[:, 0], pairs[:, 1]


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) of distinct ``hashes`` within ``max_distance`` bits (exact: the
    pigeonhole argument misses none). Expected work ~ n^2 * 4 * 17 / 65536 for random hashes at
    distance <= 7 (4 blocks of 16 bits), i.e. about n * 340 candidates at n = 650k."""
    hashes = np.asarray(hashes, dtype=np.uint64).ravel()
    return _unique_pairs(list(_search(hashes, None, max_distance)))


def cross_pairs(queries: np.ndarray, index: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with ``queries[i]`` within ``max_distance`` bits of ``index[j]`` (exact)."""
    queries = np.asarray(queries, dtype=np.uint64).ravel()
    index = np.asarray(index, dtype=np.uint64).ravel()
    return _unique_pairs(list(_search(queries, index, max_distance)))


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
    """Join hashed images (status HASH_OK) whose full-frame hash (column 0) is within
    ``max_distance`` bits of any hash (any column) of the other image.

    The search runs on distinct values only, so a heap of identical frames (or windows) never
    reaches the pairwise step: distinct full-frame hashes query the distinct values of all
    columns; each value hit becomes a node joined to every image holding it, and the querying
    image to the node. That joins exactly the image pairs of the definition (an image holding a
    hit value is within the distance of the query by that column)."""
    status = np.asarray(status)
    hashes = np.asarray(hashes, dtype=np.uint64)
    hashes = hashes[:, None] if hashes.ndim == 1 else hashes  # one hash per image
    n, k = hashes.shape
    ok = np.flatnonzero(status == HASH_OK)
    full, first = np.unique(hashes[ok, 0], return_index=True)
    values, value_of = np.unique(hashes[ok], return_inverse=True)
    query, hit = cross_pairs(full, values, max_distance)
    was_hit = np.zeros(len(values), dtype=bool)
    was_hit[hit] = True
    holder, held = np.repeat(ok, k), value_of.ravel()
    keep = was_hit[held]
    # Nodes 0..n-1 are images, n + v the value v; every component holding an image has an image
    # as its smallest index, so the first n roots are image roots.
    a = np.concatenate([ok[first[query]], holder[keep]])
    b = np.concatenate([n + hit, n + held[keep]])
    root = union_find(n + len(values), a, b)[:n]
    return Clusters(root=root, status=status)
