"""Benchmark the near-duplicate search of filter_metadata (``quiltflow.neardup``).

    .venv/bin/python benchmarks/bench_neardup.py [--rounds 7] [--images 600] [--hashes 650000]
                                                 [--real-dir DIR | --synthetic]

(a) Hashing rate on one core (one process, one thread) over 512x512 JPEGs (quality 90, 4:2:0):
    ``dhash_file``, the function filter_metadata uses (draft-mode luma decode at 1/8 scale), vs
    the plain loop ``Image.open(p).convert("L").resize((9, 8))`` + the same gradient bits (full
    RGB decode, grey, Pillow's default resize) on the same files in the same run. The image set:
    real H&E tiles when ``../shared/data/lc25000-lung-dev`` (or ``--real-dir``) exists, each
    re-encoded to 512x512 in a temporary folder (never copied into the repository); otherwise
    generated tissue-like frames (smooth stain fields, soft-edged nuclei, slide-background margins,
    mild sensor noise). The output names the set. The two loops alternate in chunks of 50 files
    (A B, B A, ...) so a slow spell of a shared machine hits both; rates are images per CPU second
    of this process, medians over rounds, and the ratio is the median of the per-round ratios. Targets: >= 1,000 images/s per core and >= 3x the plain loop. A second
    line runs ``hash_files`` with one thread per core: images per CPU second of all its threads.
(b) The neighbour search at Quilt scale: ``--hashes`` random 64-bit hashes plus 1,000 planted
    pairs at distances 0..threshold; time and recall of the planted pairs. Brute force (every
    pair, vectorised numpy) is timed on a subsample and extrapolated quadratically (it is n^2/2
    comparisons); the output says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
from quiltflow.neardup import dhash_file, hash_files, near_pairs  # noqa: E402
from quiltflow.settings import FilterSettings  # noqa: E402

REAL_DIR = ROOT.parent / "shared" / "data" / "lc25000-lung-dev"
SIDE = 512


def real_jpegs(source: Path, folder: Path, n: int) -> list[Path]:
    """Up to ``n`` real tiles of ``source`` (any depth), re-encoded to SIDE x SIDE, quality 90."""
    tiles = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif"})[:n]
    paths = []
    for i, tile in enumerate(tiles):
        with Image.open(tile) as image:
            image = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        paths.append(folder / f"real{i:05d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def synthetic_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct tissue-like frames: a smooth pink/purple stain field (upsampled low-res
    noise), soft-edged nuclei, on some frames a flat slide-background margin, mild noise; q 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = Image.fromarray(rng.uniform(0, 255, (12, 12)).astype(np.uint8))
        field = np.asarray(low.resize((SIDE, SIDE), Image.Resampling.BICUBIC), dtype=np.float32)[..., None] / 255
        pink, purple = np.array([236, 160, 196], np.float32), np.array([170, 110, 180], np.float32)
        img = pink * (1 - field) + purple * field + rng.normal(0, 6, 3)
        nuclei = Image.new("L", (SIDE, SIDE), 0)
        draw = ImageDraw.Draw(nuclei)
        for cx, cy, r in zip(*(rng.uniform(0, SIDE, 2 * 60) for _ in range(2)), rng.uniform(3, 8, 120)):
            draw.ellipse((cx - r, cy - r * rng.uniform(0.6, 1), cx + r, cy + r), fill=int(rng.uniform(150, 255)))
        alpha = np.asarray(nuclei.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)[..., None] / 255
        img = img * (1 - alpha) + np.array([95, 55, 140], np.float32) * alpha
        if i % 3 == 0:  # a frame of a lecture: slide background around the micrograph
            margin = int(rng.uniform(40, 120))
            img[:margin] = img[-margin // 2 :] = rng.uniform(225, 250)
        img += rng.normal(0, 2.5, img.shape)
        paths.append(folder / f"synthetic{i:05d}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def naive_hash(path: Path) -> int:
    """The obvious loop: full decode to RGB, grey, Pillow's default resize, gradient bits."""
    with Image.open(path) as image:
        a = np.asarray(image.convert("L").resize((9, 8)), dtype=np.int16)
    return int.from_bytes(np.packbits((a[:, 1:] > a[:, :-1]).ravel()).tobytes(), "big")


def cpu_seconds(fn, paths: list[Path]) -> float:
    """CPU seconds of this process (one thread) for ``fn`` over ``paths``: "per core" even when
    other tenants share the machine, which stretches wall time but not the CPU time spent here."""
    start = time.process_time()
    for p in paths:
        fn(p)
    return time.process_time() - start


def bench_hashing(paths: list[Path], rounds: int, chunk: int = 50) -> dict:
    """Per round, both loops run over every file, interleaved in chunks of ``chunk`` files (order
    alternating per chunk), so a slow spell of a shared machine hits both sides alike."""
    fast, naive, ratios = [], [], []
    for r in range(rounds):
        t_fast = t_naive = 0.0
        for k in range(0, len(paths), chunk):
            part = paths[k : k + chunk]
            if (r + k // chunk) % 2 == 0:
                t_fast += cpu_seconds(dhash_file, part)
                t_naive += cpu_seconds(naive_hash, part)
            else:
                t_naive += cpu_seconds(naive_hash, part)
                t_fast += cpu_seconds(dhash_file, part)
        fast.append(len(paths) / t_fast)
        naive.append(len(paths) / t_naive)
        ratios.append(t_naive / t_fast)
    return {
        "fast_img_s": statistics.median(fast),
        "naive_img_s": statistics.median(naive),
        "ratio": statistics.median(ratios),
        "ratios": [round(x, 2) for x in ratios],
    }


def bench_threads(paths: list[Path], rounds: int) -> dict:
    """hash_files (what filter_metadata calls) with one thread per core. Per core = images per CPU
    second summed over the threads (GIL waits included); the wall-clock rate is printed too, with
    the CPU share this process got, since on a shared machine wall time measures the neighbours."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_core, wall, share = [], [], []
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        hash_files(paths, threads=cores)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        per_core.append(len(paths) / cpu_seconds)
        wall.append(len(paths) / seconds)
        share.append(cpu_seconds / seconds / cores)
    return {
        "cores": cores,
        "per_core": statistics.median(per_core),
        "wall": statistics.median(wall),
        "share": statistics.median(share),
    }


def planted_hashes(n: int, pairs: int, max_distance: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    planted = []
    for k in range(min(pairs, n // 2)):
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
    parser.add_argument("--images", type=int, default=600, help="512x512 JPEGs to hash per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hashes", type=int, default=650_000)
    parser.add_argument("--brute", type=int, default=20_000, help="subsample for the brute-force timing")
    parser.add_argument("--real-dir", type=Path, default=REAL_DIR, help="folder of real tiles (any layout)")
    parser.add_argument("--synthetic", action="store_true", help="use generated frames even if real tiles exist")
    args = parser.parse_args()
    max_distance = FilterSettings.from_config({}).near_duplicate_distance
    print(
        f"{platform.machine()}, Python {platform.python_version()}, Pillow {Image.__version__}, threshold {max_distance} bits"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = (
            [] if args.synthetic or not args.real_dir.is_dir() else real_jpegs(args.real_dir, Path(tmp), args.images)
        )
        if paths:
            image_set = f"real H&E tiles of {args.real_dir.name} re-encoded to {SIDE}x{SIDE} q90"
        else:
            paths = synthetic_jpegs(Path(tmp), args.images)
            image_set = f"synthetic tissue-like frames {SIDE}x{SIDE} q90 (no real tiles at {args.real_dir})"
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        h = bench_hashing(paths, args.rounds)
        t = bench_threads(paths, max(3, args.rounds // 2))
    print(f"(a) image set: {len(paths)} {image_set}, mean file {mean_kb:.0f} KiB")
    print(
        f"    one core: draft dHash {h['fast_img_s']:,.0f} img/s vs plain full decode "
        f"{h['naive_img_s']:,.0f} img/s (medians of {args.rounds} rounds, CPU time); median ratio "
        f"{h['ratio']:.2f}x (rounds {h['ratios']}); targets >= 1,000 img/s: "
        f"{'pass' if h['fast_img_s'] >= 1000 else 'FAIL'}, >= 3x: {'pass' if h['ratio'] >= 3 else 'FAIL'}"
    )
    print(
        f"    hash_files, {t['cores']} threads: {t['per_core']:,.0f} img per CPU second (per core); wall clock "
        f"{t['wall']:,.0f} img/s with {t['share']:.0%} of {t['cores']} cores granted to this process"
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
