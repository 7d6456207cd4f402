"""SimCLR pretraining throughput: the contrastive step vs a supervised step, and the view pipeline.

Same backbone (ResNet50, BatchNorm in training mode), image size and tensor batch per step:
  (a) contrastive train step (simclr.simclr_model + NT-Xent), views/s (2 views per image),
  (b) supervised train step (ResNet50 + softmax head, sparse cross-entropy), images/s,
  (c) the augmenting input pipeline alone (simclr.pretrain_dataset over synthetic TFRecord shards
      in a temporary folder: decode, crops, dihedral, HED jitter, blur), views/s.
Targets: (a)/(b) >= 0.8 (the head and the loss cost little next to the backbone), and (c) >= 3x
(a) (the pipeline, sharing the CPU with the step, must not be what limits it). Steps (a) and (b)
alternate and each rate is a median over timed steps after warm-up. The runtime is the workflow's
(configure_runtime: mixed precision on GPU; thread pools and deterministic kernels on CPU).

    .venv/bin/python benchmarks/bench_pretrain.py [--image-size 96] [--batch 32] [--steps 4] [--check] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from quiltflow.core.settings import ShardSettings  # noqa: E402
from quiltflow.data.shards import write_shard
from quiltflow.models.builders import backbone_base  # noqa: E402
from quiltflow.models.runtime import configure_runtime  # noqa: E402
from quiltflow.models.simclr import nt_xent_loss, pretrain_dataset, simclr_model  # noqa: E402
from quiltflow.records.shard_index import write_index  # noqa: E402

NUM_CLASSES = 10


def supervised_model(image_size: int) -> keras.Model:
    """ResNet50 + softmax head, BatchNorm in training mode: the supervised counterpart of (a)."""
    preprocess, base = backbone_base("resnet50", image_size)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(base(preprocess(inputs)))
    model = keras.Model(inputs, outputs, name="supervised")
    model.compile(keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    return model


def contrastive_model(image_size: int) -> keras.Model:
    model, _ = simclr_model("resnet50", image_size, 128)
    model.compile(keras.optimizers.Adam(1e-4), loss=nt_xent_loss(0.2))
    return model


def step_times(models: dict, batches: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds per ``train_on_batch`` (the compiled step ``fit`` runs), the models alternating
    so a change of machine load hits both alike."""
    times = {name: [] for name in models}
    for i in range(warmup + steps):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(*batches[name])  # returns numpy logs: the step has finished
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def he_like(side: int, rng: np.random.Generator) -> np.ndarray:
    """Pink/purple blobs plus grain: JPEGs about the size of real H&E tiles."""
    low = rng.random((max(2, side // 24), max(2, side // 24), 3)).astype(np.float32)
    img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC), np.float32)
    img = img * np.array([0.6, 0.35, 0.55], np.float32) + np.array([110, 60, 120], np.float32)
    img += rng.normal(0, 12, (side, side, 1)).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def write_pool(tmp: Path, n: int, size: int, num_shards: int = 4) -> Path:
    """``n`` synthetic images in ``num_shards`` shards at ``size`` px; returns the index JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"{i:05d}.jpg" for i in range(n)]
    for image_id in ids:
        Image.fromarray(he_like(size, rng)).save(root / image_id, quality=90)
    manifest = tmp / "pool.parquet"
    labels = pa.array([i % NUM_CLASSES for i in range(n)], pa.int32())
    pq.write_table(pa.table({"image_id": ids, "label_index": labels, "group": ids}), manifest)
    settings = ShardSettings.from_config({"jpeg_quality": 90}, image_size=size)
    shards = [tmp / f"train-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    reports = [Path(f"{s}.report.json") for s in shards]
    for i, (shard, report) in enumerate(zip(shards, reports)):
        write_shard(manifest, root, i, num_shards, settings, shard, report)
    index = tmp / "train.index.json"
    write_index("train", size, NUM_CLASSES, shards, reports, index)
    return index


def pipeline_rate(index: Path, images_per_batch: int, image_size: int, epochs: int) -> float:
    """Median views/s of whole epochs of the view dataset (the first epoch warms up)."""
    ds = pretrain_dataset(index, images_per_batch, image_size, seed=0)
    rates = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        views = sum(int(v.shape[0]) for v, _ in ds)
        if epoch:
            rates.append(views / (time.perf_counter() - start))
    return statistics.median(rates)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32, help="tensor batch per step: views (a), images (b)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--pool", type=int, default=256, help="synthetic images for (c)")
    parser.add_argument("--quick", action="store_true", help="tiny run: checks the script works")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.batch % 2:
        parser.error("--batch counts views: must be even")
    if args.quick:
        args.image_size, args.batch, args.steps, args.pool = 32, 8, 2, 64
    return args


def main() -> int:
    args = parse_args()
    _, runtime = configure_runtime(os.cpu_count())
    keras.utils.set_random_seed(0)  # determinism (CPU) requires seeded random ops
    size, batch = args.image_size, args.batch
    print(f"device: {runtime['device']}, mixed precision {runtime['mixed_precision']}")
    print(f"ResNet50 at {size}^2, {batch} views (a) / images (b) per step, median of {args.steps} steps")

    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    batches = {
        "contrastive": (x, tf.zeros([batch], tf.float32)),
        "supervised": (x, tf.constant(rng.integers(0, NUM_CLASSES, batch), tf.int32)),
    }
    models = {"contrastive": contrastive_model(size), "supervised": supervised_model(size)}
    times = step_times(models, batches, warmup=1, steps=args.steps)
    rate = {name: batch / statistics.median(t) for name, t in times.items()}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        index = write_pool(Path(tmp), args.pool, size)
        rate["pipeline"] = pipeline_rate(index, batch // 2, size, epochs=3)

    rows = [
        ("(a) contrastive train step (views/s)", rate["contrastive"], None),
        ("(b) supervised train step (images/s)", rate["supervised"], None),
        ("(a)/(b)", rate["contrastive"] / rate["supervised"], 0.8),
        ("(c) view pipeline alone (views/s)", rate["pipeline"], None),
        ("(c)/(a)", rate["pipeline"] / rate["contrastive"], 3.0),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'metric':<{width}}  {'value':>10}  {'target':>8}  result")
    missed = []
    for name, value, target in rows:
        verdict = "" if target is None else ("PASS" if value >= target else "FAIL")
        if verdict == "FAIL":
            missed.append(name)
        print(f"{name:<{width}}  {value:>10.3g}  {'' if target is None else f'>= {target:g}':>8}  {verdict}")
    if args.quick:
        print("(--quick: sizes too small for the numbers to mean anything)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"device": runtime, "args": {k: str(v) for k, v in vars(args).items()}, "rates": rate}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
