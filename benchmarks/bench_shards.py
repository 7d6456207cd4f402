"""Benchmark TFRecord sharding and reading.

    .venv/bin/python benchmarks/bench_shards.py [--quick] [--json out.json]

On the same generated H&E-like JPEGs (512^2 and 1024^2 by default) it measures:

  crc   pure-numpy CRC32C per ~10 KB record (framing cost per record)
  (a)   write_shard images/s on one core vs a bare PIL draft-mode decode+resize+encode loop
        (target >= 85 % of the bare loop)
  (b)   two write_shard jobs in two processes vs one job alone (target >= 1.7x throughput)
  (c)   make_dataset (tf.data) iterated to the end vs a plain Python generator that decodes and
        resizes the same source images with PIL, as a loader without shards would
        (target >= 10x); a PIL generator over the shard JPEGs is shown for reference.

Each comparison runs its two sides alternately (A B, B A, A B, ...) and reports the median of
the per-round ratios, so drift in the machine's speed (other tenants, turbo) hits both sides
alike ((b) takes 2 * repeats + 1 rounds: it is the noisiest). (b) also runs the bare loop in one and two processes: that is the machine's own limit
for two parallel jobs, printed beside the shard figure. Jobs are ~2 s or longer (``--n``
images each) because shorter ones measure process scheduling more than work. Run it on a quiet
machine all the same: sharing the cores with other work makes (b) and (c) meaningless.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from quiltflow.core.settings import ShardSettings  # noqa: E402
from quiltflow.data.shards import write_shard
from quiltflow.records.shard_index import write_index  # noqa: E402
from quiltflow.records.tfrecord_io import crc32c  # noqa: E402

# ------------------------------------------------------------------------------ inputs


def he_like(side: int, seed: int) -> np.ndarray:
    """Pink/purple blobs plus fine grain: JPEG sizes close to real H&E frames of that size."""
    rng = np.random.default_rng(seed)
    low = rng.random((side // 32, side // 32, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC))
    img = img.astype(np.float32) * np.array([0.6, 0.35, 0.55], np.float32) + np.array([110, 60, 120])
    img += rng.normal(0, 12, (side, side, 1)).astype(np.float32)  # nuclei-scale grain
    return img.clip(0, 255).astype(np.uint8)


def make_sources(folder: Path, side: int, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    base = [he_like(side, seed) for seed in range(min(n, 8))]  # a few textures, many files
    ids = []
    for i in range(n):
        image_id = f"{side}/img{i:05d}.jpg"
        arr = np.roll(base[i % len(base)], shift=(i * 37) % side, axis=1)
        Image.fromarray(arr).save(folder.parent / image_id, "JPEG", quality=90)
        ids.append(image_id)
    return ids


def write_manifest(path: Path, ids: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "image_id": ids,
                "label_index": pa.array([i % 3 for i in range(len(ids))], pa.int32()),
                "group": [f"g{i}" for i in range(len(ids))],
            }
        ),
        path,
    )
    return path


# ------------------------------------------------------------------------------ workloads


def bare_loop(root: Path, ids: list[str], size: int, quality: int) -> None:
    """The floor: PIL draft decode + bilinear centre-square resize + JPEG encode, nothing else."""
    for image_id in ids:
        im = Image.open(root / image_id)
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        out = im.resize((size, size), Image.BILINEAR, box=box)
        out.save(io.BytesIO(), "JPEG", quality=quality)


def shard_job(manifest: str, root: str, index: int, num: int, size: int, quality: int, out: str) -> float:
    """One write_shard call; returns its own wall time (run in a worker process)."""
    settings = ShardSettings.from_config({"jpeg_quality": quality}, image_size=size)
    t = time.perf_counter()  # the job's image work, not the settings (schema read once)
    write_shard(manifest, root, index, num, settings, out, out + ".report.json")
    return time.perf_counter() - t


def _warm(_: int = 0) -> int:
    """Import what a shard job needs; the sleep makes every worker take one warm-up task."""
    import pyarrow.parquet  # noqa: F401

    time.sleep(0.3)
    return os.getpid()


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired(fn_a, fn_b, repeats: int) -> tuple[float, float, float]:
    """(median time of a, median time of b, median of per-round a/b), sides run alternately."""
    times_a, times_b, ratios = [], [], []
    for r in range(repeats):
        order = ((fn_a, times_a), (fn_b, times_b))
        for fn, times in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        ratios.append(times_a[-1] / times_b[-1])
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def bare_job(root: str, ids: list[str], size: int, quality: int) -> float:
    """The bare loop in a worker process; returns its own wall time."""
    t = time.perf_counter()
    bare_loop(Path(root), ids, size, quality)
    return time.perf_counter() - t


def peak_rss_mib(_: int = 0) -> float:
    """Peak resident memory of this (worker) process so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pil_generator(root: Path, ids: list[str], size: int, batch: int):
    """What a loader without shards does: decode + resize each source image in Python."""
    images, labels = [], []
    for k, image_id in enumerate(ids):
        im = Image.open(root / image_id).convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        images.append(np.asarray(im.resize((size, size), Image.BILINEAR, box=box)))
        labels.append(k % 3)
        if len(images) == batch:
            yield np.stack(images), np.array(labels, np.int32)
            images, labels = [], []
    if images:
        yield np.stack(images), np.array(labels, np.int32)


def pil_record_generator(shard: Path, batch: int):
    from quiltflow.records.tfrecord_io import read_examples

    images = []
    for ex in read_examples(shard, verify=False):
        images.append(np.asarray(Image.open(io.BytesIO(ex["image/encoded"][0])).convert("RGB")))
        if len(images) == batch:
            yield np.stack(images)
            images = []
    if images:
        yield np.stack(images)


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--n", type=int, default=500, help="images per source size (and per job)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="source image sides")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=5, help="rounds per comparison (median)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats, args.batch = 12, 2, 4
    S, Q = args.image_size, args.quality

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "platform": platform.platform(),
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "checks": [],
    }
    rows: list[tuple[str, str, str, str]] = []

    def check(name: str, value: float, target: float | None, unit: str = "") -> None:
        ok = "" if target is None else ("PASS" if value >= target else "FAIL")
        rows.append((name, f"{value:,.3g}{unit}", "" if target is None else f">= {target:g}{unit}", ok))
        results["checks"].append({"name": name, "value": value, "target": target, "pass": ok or None})

    # CRC cost per ~10 KB record.
    record = os.urandom(10_000)
    crc32c(record)  # build the table outside the timing
    reps = 200 if args.quick else 2000
    t = timed(lambda: [crc32c(record) for _ in range(reps)], 3) / reps
    check("crc32c per 10 KB record (us)", t * 1e6, None)

    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "images"
        ctx = mp.get_context("spawn")  # children start clean: no inherited threads or TensorFlow
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            list(pool.map(_warm, range(4)))  # pay process start-up and imports before timing
            for side in args.sizes:
                ids = make_sources(root / str(side), side, args.n)
                manifest = str(write_manifest(tmp / f"m{side}.parquet", ids))
                out = str(tmp / f"s{side}.tfrecord")

                # (a) one core: write_shard vs the bare loop, on the same files.
                bare, shard, ratio = paired(
                    lambda: bare_loop(root, ids, S, Q),
                    lambda: shard_job(manifest, str(root), 0, 1, S, Q, out),
                    args.repeats,
                )
                check(f"{side}^2 bare PIL loop (img/s/core)", args.n / bare, None)
                check(f"{side}^2 write_shard (img/s/core)", args.n / shard, None)
                check(f"(a) {side}^2 write_shard / bare loop", ratio, 0.85)

                # (b) one job alone vs two jobs at once, each over all n images, in workers;
                # the same for the bare loop gives what two cores of this machine can do.
                def submit_shard(k: int):
                    return pool.submit(shard_job, manifest, str(root), 0, 1, S, Q, out + f".p{k}")

                def submit_bare(k: int):
                    return pool.submit(bare_job, str(root), ids, S, Q)

                for name, submit, target in (
                    ("write_shard", submit_shard, 1.7),
                    ("bare loop (machine limit, ref)", submit_bare, None),
                ):
                    # Per-round ratios here range ~1.4-2.3 on a shared 2-vCPU machine (one vCPU
                    # often runs slower): twice the rounds for a steadier median.
                    _, _, one_over_two = paired(
                        lambda: submit(0).result(),
                        lambda: [f.result() for f in [submit(0), submit(1)]],
                        2 * args.repeats + 1,
                    )
                    # Two jobs do twice the work: throughput ratio = 2 * t(one) / t(two).
                    check(f"(b) {side}^2 two processes / one, {name}", 2 * one_over_two, target, "x")
            rss = max(pool.map(peak_rss_mib, range(4)))
            check("shard worker peak RSS (MiB, ref)", rss, None)

        # (c) reading: tf.data over the shards vs PIL decoding the same source images.
        import tensorflow as tf
        from quiltflow.models.pipeline import make_dataset

        results["machine"]["tensorflow"] = tf.__version__
        for side in args.sizes:
            ids = [f"{side}/img{i:05d}.jpg" for i in range(args.n)]
            manifest = str(tmp / f"m{side}.parquet")
            n_shards = 4
            shards, reports = [], []
            for i in range(n_shards):
                p = tmp / f"tfr{side}" / f"train-{i:05d}-of-{n_shards:05d}.tfrecord"
                p.parent.mkdir(exist_ok=True)
                settings = ShardSettings.from_config({"jpeg_quality": Q}, image_size=S)
                write_shard(manifest, root, i, n_shards, settings, p, str(p) + ".report.json")
                shards.append(p)
                reports.append(Path(str(p) + ".report.json"))
            index = tmp / f"train{side}.index.json"
            write_index("train", S, 3, shards, reports, index)

            ds = make_dataset(index, args.batch, training=False)
            count = lambda: sum(int(b[1].shape[0]) for b in ds)  # noqa: E731
            assert count() == args.n  # warm-up, and a check that nothing is lost
            t_pil, t_tf, ratio = paired(
                lambda: sum(len(b[1]) for b in pil_generator(root, ids, S, args.batch)),
                count,
                args.repeats,
            )
            check(f"{side}^2 make_dataset tf.data (img/s)", args.n / t_tf, None)
            check(f"{side}^2 PIL generator over sources (img/s)", args.n / t_pil, None)
            check(f"(c) {side}^2 tf.data / PIL source generator", ratio, 10.0, "x")
            if side == args.sizes[0]:
                aug = make_dataset(index, args.batch, training=True, augment=True, seed=0)
                t_aug = timed(lambda: sum(int(b[1].shape[0]) for b in aug), args.repeats)
                rec_n = sum(1 for _ in pil_record_generator(shards[0], 1))
                t_rec = timed(
                    lambda: sum(len(b) for b in pil_record_generator(shards[0], args.batch)),
                    args.repeats,
                )
                check("make_dataset training+augment (img/s, ref)", args.n / t_aug, None)
                check("PIL generator over shard JPEGs (img/s, ref)", rec_n / t_rec, None)

    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>12}  {'target':>9}  result")
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:>12}  {target:>9}  {ok}")
    if args.quick:
        print("(--quick: sizes too small for the numbers to mean anything)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
