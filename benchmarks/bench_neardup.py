"""Benchmark the near-duplicate search of filter_metadata (``quiltflow.neardup``).

    .venv/bin/python benchmarks/bench_neardup.py [--images 400] [--rounds 5] [--hashes 650000]

(a) Hashing rate on one core (one process, one thread) over generated 512x512 JPEGs (distinct
    H&E-like textures): ``dhash_file`` (draft-mode decode) vs a naive full decode
    ``Image.open(p).convert("L").resize((9, 8))`` on the same files. The two sides alternate
    (A B, B A, ...); rates are per CPU second of the one process, and the ratio is the median
    of the per-round ratios. Targets: >= 1,000
    images/s per core and >= 3x the naive loop.
(b) The neighbour search at Quilt scale: ``--hashes`` random 64-bit hashes plus 1,000 planted
    pairs at distances 0..threshold; time and recall of the planted pairs. Brute force (every
    pair, vectorised numpy) is timed on a subsample and extrapolated quadratically (it is n^2/2
    comparisons); the output says so.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
from quiltflow.neardup import dhash_file, near_pairs  # noqa: E402
from quiltflow.settings import FilterSettings  # noqa: E402


def make_jpegs(folder: Path, n: int, side: int = 512, seed: int = 0) -> list[Path]:
    """``n`` distinct H&E-like textures: pink stroma, purple nuclei blobs, noise; quality 90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    paths = []
    for i in range(n):
        base = np.array([235, 170, 200], np.float32) + rng.normal(0, 10, 3)
        img = np.broadcast_to(base, (side, side, 3)).copy()
        img += 20 * np.sin(xx / rng.uniform(8, 40) + rng.uniform(0, 6))[..., None]
        for cx, cy, r in zip(*(rng.uniform(0, side, 80) for _ in range(2)), rng.uniform(3, 9, 80)):
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[mask] = np.array([110, 60, 150], np.float32) + rng.normal(0, 8, 3)
        img += rng.normal(0, 6, img.shape)
        path = folder / f"tile{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def naive_hash(path: Path) -> int:
    """The obvious loop: full decode, grey, resize, gradient bits."""
    a = np.asarray(Image.open(path).convert("L").resize((9, 8)), dtype=np.int16)
    return int.from_bytes(np.packbits((a[:, 1:] > a[:, :-1]).ravel()).tobytes(), "big")


def rate(fn, paths: list[Path]) -> float:
    """Images per CPU second of this process (one thread): "per core" even when other tenants
    share the machine, which stretches wall time but not the CPU time spent here."""
    start = time.process_time()
    for p in paths:
        fn(p)
    return len(paths) / (time.process_time() - start)


def bench_hashing(paths: list[Path], rounds: int) -> dict:
    fast, naive, ratios = [], [], []
    for r in range(rounds):
        order = [(dhash_file, fast), (naive_hash, naive)]
        for fn, out in order if r % 2 == 0 else order[::-1]:
            out.append(rate(fn, paths))
        ratios.append(fast[-1] / naive[-1])
    return {
        "fast_img_s": statistics.median(fast),
        "naive_img_s": statistics.median(naive),
        "ratio": statistics.median(ratios),
        "ratios": [round(x, 2) for x in ratios],
    }


def planted_hashes(n: int, pairs: int, max_distance: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    planted = []
    for k in range(pairs):
        i, j = 2 * k, 2 * k + 1
        flips = rng.choice(64, k % (max_distance + 1), replace=False)
        hashes[j] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in flips))
        planted.append((i, j))
    return hashes, planted


def brute_force_seconds(hashes: np.ndarray, max_distance: int) -> float:
    """Every pair, one row at a time against all later rows (vectorised numpy)."""
    start = time.perf_counter()
    found = 0
    for i in range(len(hashes) - 1):
        found += int((np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= max_distance).sum())
    return time.perf_counter() - start


def bench_search(n: int, max_distance: int, brute_n: int) -> dict:
    hashes, planted = planted_hashes(n, 1000, max_distance)
    start = time.perf_counter()
    a, b = near_pairs(hashes, max_distance)
    seconds = time.perf_counter() - start
    found = set(zip(a.tolist(), b.tolist()))
    recall = sum(p in found for p in planted) / len(planted)
    brute = brute_force_seconds(hashes[:brute_n], max_distance)
    brute_full = brute * (n / brute_n) ** 2
    small_start = time.perf_counter()
    near_pairs(hashes[:brute_n], max_distance)
    small = time.perf_counter() - small_start
    return {
        "n": n,
        "seconds": seconds,
        "pairs_found": len(found),
        "recall": recall,
        "brute_n": brute_n,
        "brute_seconds": brute,
        "index_seconds_at_brute_n": small,
        "brute_extrapolated_seconds": brute_full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="distinct 512x512 JPEGs to hash per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hashes", type=int, default=650_000)
    parser.add_argument("--brute", type=int, default=20_000, help="subsample for the brute-force timing")
    args = parser.parse_args()
    max_distance = FilterSettings.from_config({}).near_duplicate_distance
    print(f"{platform.machine()}, {platform.python_version()}, threshold {max_distance} bits")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        h = bench_hashing(paths, args.rounds)
    print(
        f"(a) hashing 512x512 JPEGs, one core: draft dHash {h['fast_img_s']:,.0f} img/s vs naive full decode "
        f"{h['naive_img_s']:,.0f} img/s; median ratio {h['ratio']:.1f}x (rounds {h['ratios']}); "
        f"targets >= 1,000 img/s: {'pass' if h['fast_img_s'] >= 1000 else 'FAIL'}, "
        f">= 3x: {'pass' if h['ratio'] >= 3 else 'FAIL'}"
    )
    s = bench_search(args.hashes, max_distance, args.brute)
    print(
        f"(b) neighbour search, {s['n']:,} hashes, distance <= {max_distance}: {s['seconds']:.1f} s, "
        f"{s['pairs_found']:,} pairs, planted-pair recall {s['recall']:.3f}; brute force on {s['brute_n']:,}: "
        f"{s['brute_seconds']:.1f} s (index {s['index_seconds_at_brute_n']:.2f} s), extrapolated as n^2 to "
        f"{s['n']:,}: {s['brute_extrapolated_seconds']:,.0f} s -> {s['brute_extrapolated_seconds'] / s['seconds']:,.0f}x"
    )


if __name__ == "__main__":
    main()
