"""Benchmark: the video-level comparison of 3 models on 200,000 out-of-fold predictions in 20,000
videos with 2,000 cluster-bootstrap resamples, against a naive per-resample pandas loop.

    .venv/bin/python benchmarks/bench_compare.py [--images 200000 --videos 20000 --samples 2000]

Target: the whole comparison (3 models + ensemble + 2 baselines: intervals for accuracy, balanced
accuracy, macro F1, video accuracy and macro AUC, all video swap tests, ECE, PR-AUC) in at most
20 s on 2 cores, and at least 20x faster than the naive loop. The naive loop (resample videos,
concatenate their rows, score with scikit-learn, per resample) is timed on --naive-samples resamples
in the same run and scaled to --samples. Peak memory is the process's maximum resident set.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from quiltflow.compare.multiclass import build_comparison  # noqa: E402
from quiltflow.compare.rows import Model  # noqa: E402
from quiltflow.compare.testset import TestSet  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def synthetic_predictions(n_images: int, n_videos: int, n_models: int, seed: int = 0):
    """Clustered test predictions: 5 folds by video, per-video difficulty shared by its frames."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    video = np.sort(rng.integers(0, n_videos, n_images))
    video_label = rng.integers(0, k, n_videos)
    y_true = video_label[video]
    folds = (video % 5)[None, :]
    image_ids = np.array([f"img{i:07d}" for i in range(n_images)])
    groups = np.array([f"video{v:05d}" for v in video])
    test_set = TestSet("bench", "bench", "0" * 64, image_ids, groups, y_true, folds, (0,))
    models = []
    for m in range(n_models):
        logits = rng.normal(size=(n_images, k)).astype(np.float32)
        logits += (1.0 + 0.5 * m) * np.eye(k, dtype=np.float32)[y_true]
        logits += rng.normal(size=(n_videos, k)).astype(np.float32)[video]  # clustered errors
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        doc = {
            "weights": "none",
            "architecture": "custom_cnn",
            "metrics": {"loss": 1.0},
            "timing": {"train_seconds": 1.0, "eval_seconds": 1.0},
        }
        models.append(Model(f"model{m}", "model", doc, probs.argmax(axis=1)[None], probs[None].astype(np.float64)))
    train_counts = {c: 100 + i for i, c in enumerate(CLASSES)}
    return models, test_set, train_counts


def naive_loop(models, test_set, samples: int, seed: int) -> float:
    """Seconds for ``samples`` resamples done the obvious way: draw videos, concat their rows, score."""
    frame = pd.DataFrame({"group": test_set.groups, "y_true": test_set.y_true})
    for m in models:
        frame[m.name] = m.decisions[0]
    by_video = dict(tuple(frame.groupby("group")))
    names = np.array(list(by_video))
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(samples):
        resample = pd.concat([by_video[g] for g in rng.choice(names, len(names))], ignore_index=True)
        for m in models:
            y_true, y_pred = resample["y_true"], resample[m.name]
            _ = (y_true == y_pred).mean()
            _ = balanced_accuracy_score(y_true, y_pred)
            _ = f1_score(y_true, y_pred, average="macro", zero_division=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--permutations", type=int, default=2000)
    parser.add_argument("--naive-samples", type=int, default=5)
    args = parser.parse_args()

    models, test_set, train_counts = synthetic_predictions(args.images, args.videos, args.models)
    start = time.perf_counter()
    settings = {"seed": 0, "bootstrap_samples": args.samples, "permutations": args.permutations, "alpha": 0.05}
    # Five folds and no split report: the t-test's n_test/n_train is estimated from the fold sizes.
    document = build_comparison(models, test_set, CLASSES, train_counts, split_ratio=None, **settings)
    fast = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    naive = naive_loop(models, test_set, args.naive_samples, seed=0) / args.naive_samples * args.samples
    print(
        f"{args.images} predictions, {document['n_groups']} videos, {args.models} models (+ensemble, 2 baselines), "
        f"{args.samples} resamples, {document['permutations']} swaps per test ({args.permutations} requested, "
        f"raised for {len(document['pairwise']) + len(document['vs_majority'])} tests), {document['folds']} folds"
    )
    print(f"vectorised comparison: {fast:.1f} s; peak RSS {peak_mb:.0f} MB")
    print(f"naive pandas loop: {naive:.0f} s for {args.samples} resamples (timed on {args.naive_samples}, scaled)")
    print(f"speed-up: {naive / fast:.0f}x; design effect {document['design_effect']:.2f}")


if __name__ == "__main__":
    main()
