"""Benchmark: training throughput of the bag models (abmil, meanmil) against the frozen frame head
(resnet50_frozen's dense head), all on the same cached 2048-d features, in one run on CPU.

    .venv/bin/python benchmarks/bench_mil.py [--videos 400 --frames 8 40 --epochs 3 --threads 2]

Synthetic features (the throughput does not depend on their values): --videos videos of a random
number of frames in [--frames lo, hi). Bag models train on batches of 16 videos, each drawing up to
max_frames = 32 of its frames per step; the frame head on batches of 32 frames. Each model is
built, compiled and fit once for a warm-up epoch (tracing), then timed over --epochs epochs with
plain ``model.fit`` (no callbacks: the compute, not the checkpoint writes). Reports videos/s and
frames/s (frames the step actually processed: drawn frames for bag models, every frame for the head).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from quiltflow.core.settings import ModelSettings  # noqa: E402
from quiltflow.models.builders import FEATURE_DIM, dense_head  # noqa: E402
from quiltflow.models.mil import BagBatches, Bags, FrameStatistics  # noqa: E402
from quiltflow.models.runtime import set_thread_pools  # noqa: E402
from quiltflow.models.train import Targets, compile_model  # noqa: E402
from quiltflow.models.train_mil import build_bag_model  # noqa: E402

CLASSES = 4
MAX_FRAMES, BAG_BATCH, FRAME_BATCH = 32, 16, 32


def synthetic_bags(videos: int, frames: tuple[int, int], seed: int = 0) -> Bags:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(*frames, videos)
    groups = np.repeat([f"v{i}" for i in range(videos)], sizes)
    labels = np.repeat(np.arange(videos) % CLASSES, sizes)
    features = rng.normal(size=(int(sizes.sum()), FEATURE_DIM)).astype(np.float32)
    return Bags.from_frames(features, labels, np.array([f"f{i}" for i in range(len(groups))]), groups)


def _timed_fit(model, data, epochs: int) -> float:
    compile_model(model, 1e-3, False, Targets())
    model.fit(data, epochs=1, verbose=0, shuffle=False)  # warm-up: tracing
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / epochs


def bag_throughput(architecture: str, bags: Bags, epochs: int) -> tuple[float, float]:
    settings = ModelSettings.from_config({"architecture": architecture, "max_frames": MAX_FRAMES}, architecture)
    model = build_bag_model(settings, CLASSES, FrameStatistics.of(bags), 0, Targets().task)
    batches = BagBatches(bags, BAG_BATCH, max_frames=MAX_FRAMES, seed=0)
    seconds = _timed_fit(model, batches, epochs)
    drawn = sum(min(len(rows), MAX_FRAMES) for rows in bags.members)
    return len(bags) / seconds, drawn / seconds


def head_throughput(bags: Bags, epochs: int) -> tuple[float, float]:
    frame_labels = np.empty(len(bags.features), np.int32)
    for label, rows in zip(bags.labels, bags.members):
        frame_labels[rows] = label
    data = tf.data.Dataset.from_tensor_slices((bags.features, frame_labels))
    data = data.shuffle(len(frame_labels), seed=0).batch(FRAME_BATCH).prefetch(tf.data.AUTOTUNE)
    seconds = _timed_fit(dense_head(CLASSES), data, epochs)
    return len(bags) / seconds, len(bags.features) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--frames", type=int, nargs=2, default=(8, 40))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_thread_pools(args.threads)
    keras.utils.set_random_seed(0)
    bags = synthetic_bags(args.videos, tuple(args.frames))
    print(f"{len(bags)} videos, {len(bags.features)} frames, {FEATURE_DIM}-d features, {args.threads} threads")
    print(f"{'model':<22} {'videos/s':>10} {'frames/s':>10}")
    for name, (videos_s, frames_s) in (
        ("abmil", bag_throughput("abmil", bags, args.epochs)),
        ("meanmil", bag_throughput("meanmil", bags, args.epochs)),
        ("frozen frame head", head_throughput(bags, args.epochs)),
    ):
        print(f"{name:<22} {videos_s:>10.1f} {frames_s:>10.0f}")


if __name__ == "__main__":
    main()
