"""Why does (or does not) pretraining help? Probe cached backbone features on the validation split.

For each frozen model of a finished run, fit a logistic-regression probe and a k-NN (cosine) on
its train features and score them on its val features (never the test split), so two backbones
(e.g. random init vs SimCLR) are compared by how separable their features are, independently of
the dense head's training. Also prints the pretraining loss curve when a pretraining job exists.

    python benchmarks/probe_features.py --run DIR --models resnet50_frozen resnet50_frozen_simclr
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def load(run: Path, model: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(run / "results" / "features" / model / f"{split}.npz")
    return data["features"].astype(np.float64), data["labels"]


def knn_accuracy(train_x, train_y, val_x, val_y, k: int = 5) -> float:
    """Majority vote of the k most cosine-similar training images."""
    a = train_x / (np.linalg.norm(train_x, axis=1, keepdims=True) + 1e-12)
    b = val_x / (np.linalg.norm(val_x, axis=1, keepdims=True) + 1e-12)
    nearest = np.argsort(-(b @ a.T), axis=1)[:, :k]
    votes = np.array([np.bincount(train_y[row], minlength=train_y.max() + 1).argmax() for row in nearest])
    return float((votes == val_y).mean())


def probe(run: Path, model: str) -> dict[str, float]:
    train_x, train_y = load(run, model, "train")
    val_x, val_y = load(run, model, "val")
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(train_x), train_y)
    return {
        "linear_probe_val_accuracy": float(clf.score(scaler.transform(val_x), val_y)),
        "knn5_val_accuracy": knn_accuracy(train_x, train_y, val_x, val_y),
        "feature_std": float(train_x.std(axis=0).mean()),
        "n_train": len(train_y),
        "n_val": len(val_y),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("."), help="a finished run's working directory")
    parser.add_argument("--models", nargs="+", required=True, help="frozen models (features cached per split)")
    args = parser.parse_args()
    for model in args.models:
        print(model, {k: round(v, 3) if isinstance(v, float) else v for k, v in probe(args.run, model).items()})
    for history in sorted((args.run / "results" / "pretrained").glob("**/history.csv")):
        with open(history, newline="") as fh:
            losses = [float(row["loss"]) for row in csv.DictReader(fh)]
        print(history.relative_to(args.run), "loss per epoch:", [round(x, 3) for x in losses])


if __name__ == "__main__":
    main()
