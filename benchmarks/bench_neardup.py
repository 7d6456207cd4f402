"""Benchmark near-duplicate detection (``quiltflow.data.neardup``): the K-window gradient hashes
against today's single 64-bit dHash ("baseline", a copy of the former ``dhash_file`` kept here).

    .venv/bin/python benchmarks/bench_neardup.py [--rounds 7] [--images 600] [--hashes 650000]
                                                 [--frames 20000] [--real-dir DIR | --synthetic]

The image set: real H&E tiles when ``../shared/data/lc25000-lung-dev`` (or ``--real-dir``) exists,
each re-encoded to 512x512 q90 in a temporary folder (never copied into the repository);
otherwise generated tissue-like frames. Thresholds: the schema default for the new detector,
7 bits for the baseline (its former default).

(a) Recall of reused frames: per original, one copy per crop band (0-3 %, 3-6 %, 6-10 % of a side
    off a random non-empty set of sides, each side its own fraction), one rescaled copy (factor
    log-uniform in 0.5-1 and in 1-2), each with +-10 % gain per colour channel and JPEG quality
    80-92. A pair counts as found when the detector would join it directly (new: full-frame hash
    of either image within the threshold of any hash of the other; baseline: the two hashes).
    The windows were chosen on other crops (another seed, half of these tiles).
(b) Chance matches: every pair of the originals. LC25000 itself holds several views of one
    original (its augmentation rotates, shifts and warps); a joined pair whose best aligned
    correlation (rotations of +-25 degrees, shifts; 128x128 grey) is >= 0.6 is counted as such a
    true copy, the rest as chance (warped views fall below: check those by eye). At Quilt scale:
    (i) 650k random rows (every hash uniform and independent: the floor, plus exact counts of the
    index at that size and its time against brute force); (ii) ``--frames`` generated tissue-like
    frames (smooth stain fields, texture, a flat slide margin on 1 in 3; hashed in memory, no
    JPEG), all pairs, scaled by (650k / frames)^2 - generated hashes have correlated bits and
    shared flat margins like real lecture frames, which random rows lack, and a more uniform
    look than real ones, so they overstate chance matches for both detectors alike.
(c) Hashing cost on one core: new ``hash_file`` vs the baseline on the same files,
    alternating in chunks of 50 files (A B, B A, ...) so a slow spell of a shared machine hits
    both; images per CPU second of this process, medians over rounds, the ratio is the median of
    per-round ratios. Then ``hash_files`` with one thread per core (images per CPU second).
"""

from __future__ import annotations

import argparse
import math
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
from quiltflow.core.settings import FilterSettings  # noqa: E402
from quiltflow.data.demo import reused_frame  # noqa: E402
from quiltflow.data.neardup import (  # noqa: E402
    HASH_OK,
    HASH_VERSION,
    HASHES_PER_IMAGE,
    cross_pairs,
    hash_file,
    hash_files,
    hash_image,
    near_pairs,
)

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


BASELINE_DISTANCE = 7  # the single dHash's former default
BANDS = {"crop 0-3 %": (0.0, 0.03), "crop 3-6 %": (0.03, 0.06), "crop 6-10 %": (0.06, 0.10)}
SCALES = {"scale 0.5-1x": (0.5, 1.0), "scale 1-2x": (1.0, 2.0)}


def baseline_dhash_image(image: Image.Image) -> int:
    """Today's hash (the former ``neardup.dhash_image``): draft luma decode, 9x8 BOX thumbnail,
    bit = right neighbour brighter; 0 for a flat thumbnail (range < 8)."""
    image.draft("L", (64, 64))
    if image.mode != "L":
        image = image.convert("L")
    thumb = image.resize((9, 8), Image.Resampling.BOX)
    low, high = thumb.getextrema()
    if high - low < 8:
        return 0
    px = thumb.tobytes()
    value = 0
    for row in range(0, 72, 9):
        for k in range(row, row + 8):
            value = (value << 1) | (px[k + 1] > px[k])
    return value


def baseline_dhash_file(path: Path) -> int:
    with Image.open(path, formats=("JPEG",)) as image:
        return baseline_dhash_image(image)


def make_copies(paths: list[Path], folder: Path, seed: int = 2026) -> dict[str, list[Path]]:
    """One copy of every original per crop band and per scale band (file k copies original k)."""
    rng = np.random.default_rng(seed)
    copies: dict[str, list[Path]] = {name: [] for name in [*BANDS, *SCALES]}
    for i, path in enumerate(paths):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        for k, name in enumerate(copies):
            copies[name].append(folder / f"copy{i:05d}_{k}.jpg")
            copies[name][-1].write_bytes(reused_frame(image, rng, BANDS.get(name), SCALES.get(name)))
    return copies


def new_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance of the new detector: min over full(a) vs any(b) and full(b) vs any(a)."""
    return np.minimum(
        np.bitwise_count(a[:, :1] ^ b).min(axis=1),
        np.bitwise_count(b[:, :1] ^ a).min(axis=1),
    )


def bench_recall(paths: list[Path], folder: Path, t_new: int) -> dict:
    copies = make_copies(paths, folder)
    new_orig, status = hash_files(paths)
    old_orig = np.array([baseline_dhash_file(p) for p in paths], dtype=np.uint64)
    rows = {}
    for name, files in copies.items():
        new_copy, copy_status = hash_files(files)
        old_copy = np.array([baseline_dhash_file(p) for p in files], dtype=np.uint64)
        ok = (status == HASH_OK) & (copy_status == HASH_OK)
        distance = new_distance(new_orig, new_copy)[ok]
        rows[name] = (
            float(np.mean(distance <= t_new)),
            float(np.mean(distance <= t_new + 1)),
            float(np.mean(np.bitwise_count(old_orig ^ old_copy)[ok] <= BASELINE_DISTANCE)),
            int(ok.sum()),
        )
    return {"rows": rows, "new": new_orig, "old": old_orig, "status": status}


def grey128(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((128, 128), Image.Resampling.BOX), dtype=np.float32)


def best_alignment_correlation(a: np.ndarray, b: np.ndarray, size: int = 80) -> float:
    """Largest Pearson correlation of the central ``size`` x ``size`` patch of ``b``, rotated by
    -25..25 degrees (LC25000's augmentation rotates its originals), against every patch of ``a``
    (2-pixel steps): 0.7-0.95 for two views of one original, 0.15-0.35 for unrelated H&E tiles."""
    lo = (len(b) - size) // 2
    windows = np.lib.stride_tricks.sliding_window_view(a, (size, size))[::2, ::2].reshape(-1, size * size)
    windows = (windows - windows.mean(1, keepdims=True)) / (windows.std(1, keepdims=True) + 1e-6)
    best = -1.0
    for angle in np.arange(-25, 25.1, 2.5):
        rotated = Image.fromarray(b).rotate(float(angle), Image.Resampling.BILINEAR)
        patch = np.asarray(rotated, dtype=np.float32)[lo : lo + size, lo : lo + size].ravel()
        patch = (patch - patch.mean()) / (patch.std() + 1e-6)
        best = max(best, float((windows @ patch).max() / patch.size))
    return best


def chance_real(paths: list[Path], new: np.ndarray, old: np.ndarray, status: np.ndarray, t_new: int) -> dict:
    """Joined pairs among all pairs of the originals, split into true shifted copies and chance."""
    ok = np.flatnonzero(status == HASH_OK)
    i, j = np.triu_indices(len(ok), 1)
    i, j = ok[i], ok[j]
    distance = new_distance(new[i], new[j])
    new_hit, next_hit = distance <= t_new, distance <= t_new + 1
    old_hit = np.bitwise_count(old[i] ^ old[j]) <= BASELINE_DISTANCE
    flagged = np.flatnonzero(next_hit | old_hit)
    grey = {k: grey128(paths[k]) for k in set(i[flagged]) | set(j[flagged])}
    true = np.zeros(len(i), dtype=bool)
    true[flagged] = [best_alignment_correlation(grey[i[f]], grey[j[f]]) >= 0.6 for f in flagged]
    return {
        "pairs": len(i),
        "new_true": int((new_hit & true).sum()),
        "new_chance": int((new_hit & ~true).sum()),
        "next_true": int((next_hit & true).sum()),
        "next_chance": int((next_hit & ~true).sum()),
        "old_true": int((old_hit & true).sum()),
        "old_chance": int((old_hit & ~true).sum()),
    }


def image_pairs(hashes: np.ndarray, t: int) -> np.ndarray:
    """Distinct image pairs (i < j) the new detector joins directly, as an (m, 2) array."""
    n, k = hashes.shape
    q, x = cross_pairs(hashes[:, 0], hashes.ravel(), t)
    a, b = np.minimum(q, x // k), np.maximum(q, x // k)
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def chance_random(n: int, t_new: int, brute_n: int, seed: int = 0) -> dict:
    """Uniform random hashes: pairs joined by chance (expected C(n,2) * comparisons * P(d <= t)),
    search time, and a brute-force time on ``brute_n`` images extrapolated as n^2."""
    rng = np.random.default_rng(seed)
    new = rng.integers(0, 2**64 - 1, (n, HASHES_PER_IMAGE), dtype=np.uint64, endpoint=True)
    old = new[:, 0].copy()
    start = time.perf_counter()
    new_pairs = image_pairs(new, t_new)
    new_seconds = time.perf_counter() - start
    start = time.perf_counter()
    old_a, _ = near_pairs(old, BASELINE_DISTANCE)
    old_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sub = new[:brute_n]
    found = 0
    for row in range(brute_n):  # full-frame hash of each image against every hash, vectorised
        found += int((np.bitwise_count(sub.ravel() ^ sub[row, 0]) <= t_new).sum())
    brute = time.perf_counter() - start
    p_new = sum(math.comb(64, d) for d in range(t_new + 1)) / 2**64
    p_next = p_new + math.comb(64, t_new + 1) / 2**64
    p_old = sum(math.comb(64, d) for d in range(BASELINE_DISTANCE + 1)) / 2**64
    return {
        "new_pairs": len(new_pairs),
        "old_pairs": len(old_a),
        "new_expected": math.comb(n, 2) * (2 * HASHES_PER_IMAGE - 1) * p_new,
        "next_expected": math.comb(n, 2) * (2 * HASHES_PER_IMAGE - 1) * p_next,
        "old_expected": math.comb(n, 2) * p_old,
        "new_seconds": new_seconds,
        "old_seconds": old_seconds,
        "brute_extrapolated": brute * (n / brute_n) ** 2,
    }


def generated_frames(count: int, seed: int = 1) -> np.ndarray:
    """``count`` unrelated 64x64 grey tissue-like frames (the size of a 512x512 JPEG's draft
    decode): a smooth stain field, nucleus-scale texture, fine noise, a slide margin on 1 in 3."""
    rng = np.random.default_rng(seed)

    def upsample(low: np.ndarray) -> np.ndarray:  # bilinear, batched: (count, m, m) -> (count, 64, 64)
        m = low.shape[-1]
        x = np.clip((np.arange(64) + 0.5) * m / 64 - 0.5, 0, m - 1)
        weights = np.maximum(0, 1 - np.abs(x[:, None] - np.arange(m)[None, :]))
        return weights @ low @ weights.T

    frames = 150 + 40 * upsample(rng.normal(0, 1, (count, 6, 6)))
    frames += 25 * upsample(rng.normal(0, 1, (count, 24, 24))) + rng.normal(0, 4, (count, 64, 64))
    margins = rng.integers(5, 16, count)
    for k in range(0, count, 3):
        frames[k, : margins[k]] = rng.uniform(225, 250)
    return np.clip(frames, 0, 255).astype(np.uint8)


def chance_generated(count: int, t_new: int) -> dict:
    frames = generated_frames(count)
    new = np.zeros((count, HASHES_PER_IMAGE), dtype=np.uint64)
    old = np.zeros(count, dtype=np.uint64)
    ok = np.zeros(count, dtype=bool)
    for k, frame in enumerate(frames):
        values, status = hash_image(Image.fromarray(frame))
        new[k], ok[k] = values, status == HASH_OK
        old[k] = baseline_dhash_image(Image.fromarray(frame))
    return {
        "frames": int(ok.sum()),
        "new_pairs": len(image_pairs(new[ok], t_new)),
        "next_pairs": len(image_pairs(new[ok], t_new + 1)),
        "old_pairs": len(near_pairs(old[ok], BASELINE_DISTANCE)[0]),
    }


def cpu_seconds(fn, paths: list[Path]) -> float:
    """CPU seconds of this process (one thread) for ``fn`` over ``paths``: "per core" even when
    other tenants share the machine, which stretches wall time but not the CPU time spent here."""
    start = time.process_time()
    for p in paths:
        fn(p)
    return time.process_time() - start


def bench_hashing(paths: list[Path], rounds: int, chunk: int = 50) -> dict:
    """Per round, both hashes run over every file, interleaved in chunks of ``chunk`` files (order
    alternating per chunk), so a slow spell of a shared machine hits both sides alike."""
    new, old, ratios = [], [], []
    for r in range(rounds):
        t_new = t_old = 0.0
        for k in range(0, len(paths), chunk):
            part = paths[k : k + chunk]
            if (r + k // chunk) % 2 == 0:
                t_new += cpu_seconds(hash_file, part)
                t_old += cpu_seconds(baseline_dhash_file, part)
            else:
                t_old += cpu_seconds(baseline_dhash_file, part)
                t_new += cpu_seconds(hash_file, part)
        new.append(len(paths) / t_new)
        old.append(len(paths) / t_old)
        ratios.append(t_old / t_new)
    return {
        "new": statistics.median(new),
        "old": statistics.median(old),
        "ratio": statistics.median(ratios),
        "ratios": [round(x, 2) for x in ratios],
    }


def bench_threads(paths: list[Path], rounds: int) -> dict:
    """hash_files (what filter_metadata calls) with one thread per core. Per core = images per CPU
    second summed over the threads (GIL waits included)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_core = []
    for _ in range(rounds):
        cpu = time.process_time()
        hash_files(paths, threads=cores)
        per_core.append(len(paths) / (time.process_time() - cpu))
    return {"cores": cores, "per_core": statistics.median(per_core)}


def image_set(args: argparse.Namespace, folder: Path) -> tuple[list[Path], str]:
    paths = [] if args.synthetic or not args.real_dir.is_dir() else real_jpegs(args.real_dir, folder, args.images)
    if paths:
        return paths, f"real H&E tiles of {args.real_dir.name} re-encoded to {SIDE}x{SIDE} q90"
    return synthetic_jpegs(folder, args.images), f"synthetic tissue-like frames {SIDE}x{SIDE} q90 (no {args.real_dir})"


def report(t_new: int, recall: dict, real: dict, rand: dict, gen: dict, speed: dict, threads: dict) -> None:
    n, f = rand["n"], gen["frames"]
    scale = (n / f) ** 2
    print(
        f"| measure | new ({HASH_VERSION}), <= {t_new} bits | new, <= {t_new + 1} bits "
        f"| baseline (dHash64), <= {BASELINE_DISTANCE} bits |"
    )
    print("|---|---|---|---|")
    for name, (new, following, old, count) in recall["rows"].items():
        print(f"| recall, {name} ({count} copies) | {new:.3f} | {following:.3f} | {old:.3f} |")
    print(
        f"| chance pairs among all {real['pairs']:,} pairs of the originals (after the next row) | {real['new_chance']} "
        f"| {real['next_chance']} | {real['old_chance']} |"
    )
    print(
        f"| ... of them true copies: views of one original (aligned correlation >= 0.6) | {real['new_true']} | {real['next_true']} "
        f"| {real['old_true']} |"
    )
    print(
        f"| chance pairs among {f:,} generated frames (x{scale:,.0f} -> {n:,}) | {gen['new_pairs']} "
        f"(~{gen['new_pairs'] * scale:,.0f}) | {gen['next_pairs']} (~{gen['next_pairs'] * scale:,.0f}) "
        f"| {gen['old_pairs']} (~{gen['old_pairs'] * scale:,.0f}) |"
    )
    print(
        f"| chance pairs among {n:,} uniform random images: found (expected) | {rand['new_pairs']} "
        f"({rand['new_expected']:.1f}) | ({rand['next_expected']:.1f}) | {rand['old_pairs']} ({rand['old_expected']:.1f}) |"
    )
    print(
        f"| search time, {n:,} images (brute force extrapolated as n^2) | {rand['new_seconds']:.1f} s "
        f"({rand['brute_extrapolated']:,.0f} s) | | {rand['old_seconds']:.1f} s |"
    )
    print(
        f"| hashing, images per CPU second, one core (median of {len(speed['ratios'])} rounds) "
        f"| {speed['new']:,.0f} | | {speed['old']:,.0f} |"
    )
    print(f"| speed new / baseline (median of per-round ratios {speed['ratios']}) | {speed['ratio']:.2f} | | 1 |")
    print(f"| hash_files, {threads['cores']} threads, images per CPU second | {threads['per_core']:,.0f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="512x512 originals")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hashes", type=int, default=650_000, help="random images at Quilt scale")
    parser.add_argument("--frames", type=int, default=20_000, help="generated frames for chance matches")
    parser.add_argument("--brute", type=int, default=3_000, help="subsample for the brute-force timing")
    parser.add_argument("--real-dir", type=Path, default=REAL_DIR, help="folder of real tiles (any layout)")
    parser.add_argument("--synthetic", action="store_true", help="use generated frames even if real tiles exist")
    args = parser.parse_args()
    t_new = FilterSettings.from_config({}).near_duplicate_distance
    started = time.perf_counter()
    print(
        f"{platform.machine()}, Python {platform.python_version()}, Pillow {Image.__version__}, numpy {np.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths, name = image_set(args, Path(tmp))
        print(
            f"image set: {len(paths)} {name}, mean file {sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KiB"
        )
        recall = bench_recall(paths, Path(tmp), t_new)
        real = chance_real(paths, recall["new"], recall["old"], recall["status"], t_new)
        speed = bench_hashing(paths, args.rounds)
        threads = bench_threads(paths, max(3, args.rounds // 2))
    gen = chance_generated(args.frames, t_new)
    rand = chance_random(args.hashes, t_new, args.brute) | {"n": args.hashes}
    report(t_new, recall, real, rand, gen, speed, threads)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
