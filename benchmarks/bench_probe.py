"""Benchmark: the probe protocol (issue 26) on synthetic cached features, and its k-NN against
scikit-learn's brute-force KNeighborsClassifier on the same data.

    .venv/bin/python benchmarks/bench_probe.py [--images 100000 --dim 768 --classes 20 --threads 2]

The whole protocol: 4 label fractions x 2 methods (linear probe with its C grid, weighted k-NN)
x 3 seeds on one holdout split (70 % train, 10 % validation, 20 % test; 10 frames per video).
Targets: at most 3 min and 2 GB peak resident memory on 2 cores. The k-NN check takes the full
training set and --compare-queries test images: the same predicted class for every query (ties
aside), and the time ratio scikit-learn / ours. Peak memory is the process's maximum resident set,
read after the protocol (before scikit-learn's k-NN runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from quiltflow.evaluation import probe  # noqa: E402

TARGETS = {"protocol_seconds": 180.0, "peak_mb": 2048.0}


def synthetic_features(n_images: int, dim: int, classes: int, frames: int = 10, seed: int = 0):
    """Features with a class direction, a per-video offset (frames of a video are alike) and noise."""
    rng = np.random.default_rng(seed)
    n_videos = n_images // frames
    video_label = rng.integers(0, classes, n_videos)
    video = np.repeat(np.arange(n_videos), frames)[:n_images]
    centres = rng.normal(scale=0.4, size=(classes, dim)).astype(np.float32)  # overlapping classes
    offsets = rng.normal(scale=1.5, size=(n_videos, dim)).astype(np.float32)
    x = centres[video_label[video]] + offsets[video]
    x += rng.normal(scale=3.0, size=x.shape).astype(np.float32)
    groups = np.array([f"v{i}" for i in video])
    ids = np.array([f"i{i}" for i in range(n_images)])
    return probe.Split(x, video_label[video].astype(np.int64), ids, groups), n_videos


def holdout(data: probe.Split, n_videos: int, seed: int = 1) -> tuple[probe.Split, probe.Split, probe.Split]:
    """Train / validation / test by video (70 / 10 / 20 %)."""
    order = np.random.default_rng(seed).permutation(n_videos)
    part = np.empty(n_videos, np.int64)
    part[order[: int(0.7 * n_videos)]] = 0
    part[order[int(0.7 * n_videos) : int(0.8 * n_videos)]] = 1
    part[order[int(0.8 * n_videos) :]] = 2
    of_image = part[np.array([int(g[1:]) for g in data.groups])]
    return tuple(data.take(of_image == p) for p in range(3))


def compare_knn(train: probe.Split, test: probe.Split, classes: int, settings: probe.ProbeSettings, queries: int):
    query = test.features[:queries]
    start = time.perf_counter()
    ours = probe.knn_probabilities(
        train.features, train.labels, query, classes, k=settings.k, temperature=settings.temperature
    )
    ours_s = time.perf_counter() - start
    reference = KNeighborsClassifier(
        n_neighbors=settings.k,
        metric="cosine",
        algorithm="brute",
        weights=lambda d: np.exp((1 - d) / settings.temperature),
    ).fit(train.features, train.labels)
    start = time.perf_counter()
    theirs = reference.predict_proba(query)
    sklearn_s = time.perf_counter() - start
    return {
        "queries": int(len(query)),
        "train": int(len(train.labels)),
        "same_argmax": float((ours.argmax(1) == theirs.argmax(1)).mean()),
        "max_abs_probability_difference": float(np.abs(ours - theirs).max()),
        "ours_seconds": ours_s,
        "sklearn_seconds": sklearn_s,
        "sklearn_over_ours": sklearn_s / ours_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-queries", type=int, default=5000)
    args = parser.parse_args()
    data, n_videos = synthetic_features(args.images, args.dim, args.classes)
    train, val, test = holdout(data, n_videos)
    del data
    settings = probe.ProbeSettings()
    runs = [probe.RunData(0, seed, train, val, test) for seed in args.seeds]
    with threadpool_limits(limits=args.threads):
        start = time.perf_counter()
        result = probe.run_protocol(runs, args.classes, settings)
        protocol_s = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        knn = compare_knn(train, test, args.classes, settings, args.compare_queries)
    frame = result.predictions
    accuracy = (
        frame.assign(hit=frame["true_label"] == frame["pred_label"]).groupby(["method", "fraction"])["hit"].mean()
    )
    report = {
        "images": args.images,
        "dim": args.dim,
        "classes": args.classes,
        "fits": len(args.seeds) * len(settings.fractions) * len(probe.METHODS),
        "protocol_seconds": protocol_s,
        "peak_mb": peak_mb,
        "accuracy": {f"{m}@{f:g}": float(v) for (m, f), v in accuracy.items()},
        "chosen_c": [b["c"].get("linear") for b in result.budgets],
        "knn_vs_sklearn": knn,
        "targets_met": protocol_s <= TARGETS["protocol_seconds"] and peak_mb <= TARGETS["peak_mb"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
