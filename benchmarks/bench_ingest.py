"""Ingest benchmark: filter + split a Quilt-1M-sized lookup, next to a naive implementation.

    .venv/bin/python benchmarks/bench_ingest.py                 # 1,000,000 rows, 650,000 images
    .venv/bin/python benchmarks/bench_ingest.py --quick         # 50,000 rows
    .venv/bin/python benchmarks/bench_ingest.py --json out.json

Builds, in a temporary folder, a Quilt-format lookup (realistic subset mix, several caption rows
per image, a few thousand distinct pathology strings, missing files, not_histology rows) and a
flat folder of empty image files, then times, each in a fresh child process:

* fast:  ``quiltflow.data.metadata.filter_metadata`` + ``write_filtered`` + ``quiltflow.data.splits``
  ``make_splits`` + ``write_splits`` (what the two Snakemake rules do);
* naive: pandas ``iterrows``, ``ast.literal_eval`` and ``os.path.exists`` per row, a Python
  loop split. It is time-boxed: it runs on the first ``--naive-rows`` rows and its time is
  extrapolated linearly to the full size (the output says so).

Peak memory is the child's ``ru_maxrss``. Targets: fast <= 5 s, >= 5x faster than naive,
peak <= 2 GB.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))

from quiltflow.data.demo import _ID_ALPHABET, LOOKUP_COLUMNS  # noqa: E402
from quiltflow.data.lookup import SUBSPECIALTIES  # noqa: E402

# Rows per subset in the real lookup.
SUBSET_ROWS = {"quilt": 802_148, "openpath": 133_511, "pubmed": 59_371, "laion": 22_682}
TARGETS = {"fast_seconds": 5.0, "speedup": 5.0, "peak_mb": 2048.0}
# near_duplicates off: the files here are empty (no pixels to hash), and hashing is timed by
# benchmarks/bench_neardup.py; the ingest target (filter + split <= 5 s) excludes it.
FILTERS = {"min_per_class": 100, "near_duplicates": "off"}
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
_WORDS = (
    "nuclei stroma gland mitotic atypia fibrosis necrosis lymphocytes carcinoma benign "
    "eosinophilic basophilic cytoplasm chromatin nucleoli architecture infiltrate margin"
).split()


def _caption_pool(rng: np.random.Generator, n: int = 4000) -> list[str]:
    """Caption-like texts of 40-160 characters; some carry commas, quotes and line breaks."""
    pool = []
    for i in range(n):
        text = " ".join(rng.choice(_WORDS, int(rng.integers(5, 20))))
        if i % 7 == 0:
            text += ', "quoted", and a comma'
        if i % 31 == 0:
            text += "\nsecond line"
        pool.append(text)
    return pool


def make_quilt_fixture(
    out_dir: str | Path, rows: int = 1_000_000, images: int = 650_000, seed: int = 0
) -> tuple[Path, Path]:
    """Write a Quilt-format lookup of ``rows`` rows over ``images`` distinct images, and a flat
    folder of empty ``.jpg`` files (about 3% of the images left missing). Returns the paths."""
    if images > rows:
        raise ValueError("images must be <= rows")
    out_dir = Path(out_dir)
    image_root = out_dir / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    lookup = out_dir / "quilt_1M_lookup.csv"
    rng = np.random.default_rng(seed)

    subsets = list(SUBSET_ROWS)
    share = np.array(list(SUBSET_ROWS.values()), float)
    subset_of_img = rng.choice(len(subsets), images, p=share / share.sum())
    quilt = np.flatnonzero(subset_of_img == 0)
    n_videos = max(4, len(quilt) // 100)
    vids = ["".join(v) for v in rng.choice(_ID_ALPHABET, (n_videos, 11))]
    video_of_img = np.full(images, -1)
    video_of_img[quilt] = rng.integers(0, n_videos, len(quilt))

    hexes = [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**62, (images, 2)).tolist()]
    names = [
        (
            f"{vids[v]}_image_{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}.jpg"
            if s == 0
            else f"{subsets[s]}_{h[:20]}.jpg"
        )
        for s, v, h in zip(subset_of_img.tolist(), video_of_img.tolist(), hexes)
    ]
    # Pathology: per video a list of 1-3 subspecialties (a few thousand distinct strings);
    # single labels or empty elsewhere, NaN for laion, a few malformed.
    subs = np.array(SUBSPECIALTIES)
    video_path = [
        repr([str(x) for x in rng.choice(subs, int(rng.integers(1, 4)), replace=False)]) for _ in range(n_videos)
    ]
    single = [repr([s]) for s in SUBSPECIALTIES] + ["", "['Renal', 'Bone'"]
    pick = rng.choice(len(single), images, p=[0.9 / 18] * 18 + [0.095, 0.005])
    pathology = [
        video_path[v] if s == 0 else (None if s == 3 else single[k])
        for s, v, k in zip(subset_of_img.tolist(), video_of_img.tolist(), pick.tolist())
    ]
    split_of_video = np.where(rng.random(n_videos) < 0.1, "val", "train")
    split = np.where(subset_of_img == 0, split_of_video[np.maximum(video_of_img, 0)], "train")
    side = rng.choice([224.0, 512.0, 720.0, 1080.0], (images, 2))
    not_hist = (rng.random(images) < 0.03).astype(np.int64)

    # Rows: every image once, the rest as extra caption rows; shuffled like a real export.
    row_img = np.concatenate([np.arange(images), rng.integers(0, images, rows - images)])
    row_img = row_img[rng.permutation(rows)]
    is_quilt = subset_of_img[row_img] == 0
    pool = pa.array(_caption_pool(rng))
    caption = pool.take(pa.array(rng.integers(0, len(pool), rows)))
    mag = np.where(is_quilt, rng.integers(0, 3, rows).astype(float), np.nan)
    table = pa.table(
        {
            "Unnamed: 0": np.arange(rows),
            "caption": caption,
            "image_path": pa.array(names).take(pa.array(row_img)),
            "subset": pa.array(subsets).take(pa.array(subset_of_img[row_img])),
            "split": pa.array(split[row_img]),
            "pathology": pa.array(pathology, pa.string()).take(pa.array(row_img)),
            "roi_text": pa.array(np.where(is_quilt, "['nuclei', 'stroma']", None)),
            "noisy_text": caption,
            "corrected_text": caption,
            "med_umls_ids": pa.array(np.where(is_quilt, "[['C0027540'], ['C0038466']]", None)),
            "magnification": pa.array(mag, from_pandas=True),
            "height": side[row_img, 0],
            "width": side[row_img, 1],
            "not_histology": not_hist[row_img],
            "single_wsi": rng.integers(0, 2, rows),
        }
    ).select(list(LOOKUP_COLUMNS))  # the real export's columns, in its order (KeyError if not)
    pacsv.write_csv(table, lookup)

    present = rng.random(images) >= 0.03
    flags = os.O_CREAT | os.O_WRONLY
    for name, keep in zip(names, present.tolist()):
        if keep:
            os.close(os.open(image_root / name, flags, 0o644))
    return lookup, image_root


def make_hash_table(lookup: Path, image_root: Path, path: Path, seed: int = 0) -> int:
    """What rule hash_images would write for the fixture (whose files are empty): random hashes,
    1 % of the images given another image's hashes (reused frames, so clusters join videos)."""
    from quiltflow.data.image_hashes import existing_images, hash_table, write_image_hashes
    from quiltflow.data.neardup import HASH_OK, HASHES_PER_IMAGE

    names = existing_images("quilt", lookup, image_root, None)
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, (len(names), HASHES_PER_IMAGE), dtype=np.uint64)
    copies = rng.choice(len(names), len(names) // 100, replace=False)
    hashes[copies] = hashes[rng.integers(0, len(names), len(copies))]
    stats = np.zeros((len(names), 2), dtype=np.int64)
    status = np.full(len(names), HASH_OK, dtype=np.int8)
    write_image_hashes(hash_table(names, hashes, status, stats)[1], path)
    return len(names)


def _fast(lookup: Path, image_root: Path, out: Path, hashes: Path | None = None) -> dict:
    """The workflow's implementation, as the two rules run it; with ``hashes`` (rule
    hash_images' table) near-duplicate grouping is on, as in the default config."""
    from quiltflow.core.settings import FilterSettings, SplitSettings
    from quiltflow.data.image_hashes import read_image_hashes
    from quiltflow.data.metadata import filter_metadata
    from quiltflow.data.splits import make_splits, write_splits
    from quiltflow.records.tables import read_filtered, write_filtered

    t0 = time.perf_counter()
    filters = FilterSettings.from_config(FILTERS | ({"near_duplicates": "group"} if hashes else {}))
    image_hashes = read_image_hashes(hashes) if hashes else None
    table, report = filter_metadata("quilt", lookup, image_root, filters, None, image_hashes=image_hashes)
    write_filtered(table, report, out / "filtered.parquet", out / "filter_report.json")
    t1 = time.perf_counter()
    manifests, label_map, split_report = make_splits(
        read_filtered(out / "filtered.parquet"),
        SplitSettings.from_config({"fractions": FRACTIONS}, seed=42),
    )
    write_splits(
        manifests,
        label_map,
        split_report,
        {s: out / f"{s}.parquet" for s in manifests},
        out / "label_map.json",
        out / "split_report.json",
    )
    t2 = time.perf_counter()
    return {
        "filter_seconds": t1 - t0,
        "split_seconds": t2 - t1,
        "seconds": t2 - t0,
        "images_kept": report["images_kept"],
        "rows_in": report["rows_in"],
    }


def _naive(lookup: Path, image_root: Path, out: Path, nrows: int) -> dict:
    """The obvious version: row iteration, literal_eval and a stat per row, Python split."""
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(lookup, nrows=nrows)
    kept: dict[str, dict] = {}
    for _, row in df.iterrows():
        if row["not_histology"] == 1:
            continue
        try:
            labels = ast.literal_eval(row["pathology"])
        except (ValueError, SyntaxError):
            continue
        if not isinstance(labels, list) or not labels:
            continue
        path = row["image_path"]
        if os.path.isabs(path) or not os.path.exists(os.path.join(image_root, path)):
            continue
        if path in kept:
            kept[path]["n_captions"] += 1
            continue
        m = re.match(r"^(.{11})_image_", path)
        group = m.group(1) if m and row["subset"] == "quilt" else os.path.splitext(path)[0]
        kept[path] = {"image_id": path, "label": labels[0], "group": group, "n_captions": 1}
    table = pd.DataFrame(list(kept.values()))
    counts = table["label"].value_counts()
    # min_per_class scaled to the subsample, so the naive run keeps a comparable share of classes
    min_count = max(1, FILTERS["min_per_class"] * len(df) // 1_000_000)
    table = table[table["label"].isin(counts[counts >= min_count].index)]
    table.sort_values("image_id").to_parquet(out / "naive_filtered.parquet", index=False)
    groups = sorted(table["group"].unique())
    random.Random(42).shuffle(groups)
    split_of, done = {}, 0
    sizes = table.groupby("group").size()
    for g in groups:  # cumulative fill, not stratified
        frac = done / max(len(table), 1)
        split_of[g] = (
            "train"
            if frac < FRACTIONS["train"]
            else ("val" if frac < FRACTIONS["train"] + FRACTIONS["val"] else "test")
        )
        done += int(sizes[g])
    table["split"] = [split_of[g] for g in table["group"]]
    for s, part in table.groupby("split"):
        part.to_parquet(out / f"naive_{s}.parquet", index=False)
    return {"seconds": time.perf_counter() - t0, "rows": int(len(df))}


def _child(args: list[str]) -> None:
    """Run one implementation in this (fresh) process; print its result with peak RSS."""
    kind, lookup, image_root, out, nrows = args
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "fast":
        result = _fast(Path(lookup), Path(image_root), out)
    elif kind == "hashed":
        result = _fast(Path(lookup), Path(image_root), out, hashes=Path(nrows))
    else:
        result = _naive(Path(lookup), Path(image_root), out, int(nrows))
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(result))


def _run_child(kind: str, lookup: Path, image_root: Path, out: Path, nrows: int | Path = 0) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--_child",
            kind,
            str(lookup),
            str(image_root),
            str(out),
            str(nrows),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, help="distinct images (default: 65%% of --rows)")
    parser.add_argument(
        "--naive-rows",
        type=int,
        default=50_000,
        help="rows the naive version runs on; its time is extrapolated linearly",
    )
    parser.add_argument("--quick", action="store_true", help="50,000 rows (checks the script runs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="build the fixture here and keep it (reused if present)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.naive_rows = 50_000, min(args.naive_rows, 10_000)
    images = args.images or int(args.rows * 0.65)
    naive_rows = min(args.naive_rows, args.rows)

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        data = args.keep or Path(tmp) / "data"
        t0 = time.perf_counter()
        if args.keep and (data / "quilt_1M_lookup.csv").is_file():
            lookup, image_root = data / "quilt_1M_lookup.csv", data / "images"
        else:
            lookup, image_root = make_quilt_fixture(data, args.rows, images)
        fixture_s = time.perf_counter() - t0
        fast = _run_child("fast", lookup, image_root, Path(tmp) / "fast")
        hash_path = Path(tmp) / "image_hashes.parquet"
        n_hashed = make_hash_table(lookup, image_root, hash_path)
        hashed = _run_child("hashed", lookup, image_root, Path(tmp) / "hashed", hash_path)
        naive = _run_child("naive", lookup, image_root, Path(tmp) / "naive", naive_rows)
        naive_full = naive["seconds"] * fast["rows_in"] / naive["rows"]
        result = {
            "rows": fast["rows_in"],
            "images": images,
            "images_kept": fast["images_kept"],
            "lookup_mb": lookup.stat().st_size / 2**20,
            "fixture_seconds": fixture_s,
            "fast_seconds": fast["seconds"],
            "fast_filter_seconds": fast["filter_seconds"],
            "fast_split_seconds": fast["split_seconds"],
            "peak_mb": fast["peak_mb"],
            "hash_table_images": n_hashed,
            "grouped_filter_seconds": hashed["filter_seconds"],
            "grouped_seconds": hashed["seconds"],
            "grouped_peak_mb": hashed["peak_mb"],
            "naive_rows_measured": naive["rows"],
            "naive_seconds_measured": naive["seconds"],
            "naive_seconds": naive_full,
            "naive_extrapolated": naive["rows"] < fast["rows_in"],
            "speedup": naive_full / fast["seconds"],
            "cpu_count": os.cpu_count(),
            "targets": TARGETS,
        }
        result["pass"] = {
            "fast_seconds": result["fast_seconds"] <= TARGETS["fast_seconds"],
            "speedup": result["speedup"] >= TARGETS["speedup"],
            "peak_mb": result["peak_mb"] <= TARGETS["peak_mb"],
        }

    print(
        f"lookup: {result['rows']:,} rows, {images:,} distinct images, "
        f"{result['lookup_mb']:.0f} MiB "
        f"(fixture built in {fixture_s:.1f} s); kept {result['images_kept']:,} images"
    )
    print(
        f"fast  filter+split: {result['fast_seconds']:.2f} s "
        f"(filter {result['fast_filter_seconds']:.2f} s, "
        f"split {result['fast_split_seconds']:.2f} s), peak RSS {result['peak_mb']:.0f} MiB"
    )
    print(
        f"with near_duplicates: group from a hash table of {n_hashed:,} images (rule hash_images' output; "
        f"a filter change reruns only this): filter+split {result['grouped_seconds']:.2f} s "
        f"(filter {result['grouped_filter_seconds']:.2f} s), peak RSS {result['grouped_peak_mb']:.0f} MiB"
    )
    how = (
        f"measured on {naive['rows']:,} rows in {naive['seconds']:.2f} s, extrapolated linearly"
        if result["naive_extrapolated"]
        else "measured on all rows"
    )
    print(f"naive filter+split: {naive_full:.1f} s ({how})")
    print(f"speed-up: {result['speedup']:.1f}x")
    for key, ok in result["pass"].items():
        print(f"target {key}: {'PASS' if ok else 'FAIL'} (limit {TARGETS[key]})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
