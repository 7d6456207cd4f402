"""Comparison figures: metric bars with CIs, normalised confusion matrices, training curves, reliability
diagrams; for multi-label runs mAP/AUC bars, per-label AP and per-label decision counts.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed), so it is
safe in batch jobs and threads. No TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from quiltflow.compare import multilabel
from quiltflow.compare.testset import as_bool
from quiltflow.core.errors import UserError


def _save(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_metric_bars(rows: Sequence[Mapping], path: str | Path, *, level: float = 0.95) -> None:
    """Grouped bars of accuracy and macro F1 per model/baseline, with bootstrap CI error bars.

    ``rows``: dicts with ``name``, ``kind``, ``accuracy``, ``accuracy_ci``, ``f1_macro``, ``f1_macro_ci``.
    """
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.0))
    ax = fig.add_subplot()
    for offset, key, label in ((-width / 2, "accuracy", "accuracy"), (width / 2, "f1_macro", "macro F1")):
        values = np.array([r[key] for r in rows], dtype=float)
        ci = np.array([r[f"{key}_ci"] for r in rows], dtype=float)
        err = np.vstack([values - ci[:, 0], ci[:, 1] - values]).clip(min=0)
        bars = ax.bar(x + offset, values, width, yerr=err, capsize=3, label=label)
        # Baselines are hatched so nobody mistakes them for trained models.
        for bar, row in zip(bars, rows):
            if row.get("kind") == "baseline":
                bar.set_hatch("//")
                bar.set_alpha(0.6)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score on the test set")
    ax.set_title(f"Test metrics with {level:.0%} cluster-bootstrap CIs over videos (hatched: baselines)")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, path: str | Path) -> None:
    """Row-normalised confusion matrix (rows true, columns predicted): each row shows recall spread."""
    cm = np.asarray(matrix, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    k = len(class_names)
    size = min(14.0, max(4.0, 0.55 * k + 2.5))
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:  # beyond that the numbers are unreadable; the colours still show the pattern
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    _save(fig, path)


def _history_column(history: pd.DataFrame, metric: str, validation: bool) -> str | None:
    """Name of the loss/accuracy column (Keras names accuracy variously, e.g. sparse_categorical_accuracy)."""
    prefix = "val_" if validation else ""
    if metric == "loss":
        return f"{prefix}loss" if f"{prefix}loss" in history.columns else None
    for column in history.columns:
        bare = column[len(prefix) :] if column.startswith(prefix) else None
        if bare is None or bare.startswith("val_"):
            continue
        if bare.endswith("accuracy") and "top" not in bare:
            return column
    return None


def read_history(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"history file not found: {path}")
    try:
        history = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"history file {path}: empty") from None
    if "loss" not in history.columns:
        raise UserError(f"history file {path}: missing column loss")
    return history


def plot_training_curves(histories: Mapping[str, pd.DataFrame], path: str | Path) -> None:
    """Loss and accuracy per epoch for every model: train solid, validation dashed."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for (name, history), color in zip(histories.items(), _colors(len(histories))):
        epochs = history["epoch"].to_numpy() + 1 if "epoch" in history.columns else np.arange(1, len(history) + 1)
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for validation, style in ((False, "-"), (True, "--")):
                column = _history_column(history, metric, validation)
                if column is not None:
                    label = f"{name} ({'val' if validation else 'train'})"
                    ax.plot(epochs, history[column].to_numpy(float), style, color=color, marker=".", label=label)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (solid: train, dashed: validation)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1.02)
    _save(fig, path)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_reliability(table: Mapping[str, np.ndarray], title: str, path: str | Path) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin (the diagonal is
    perfect calibration), with the share of images per bin below.

    ``table``: ``edges`` [M + 1], ``count``, ``confidence``, ``accuracy`` [M] (empty bins NaN).
    """
    edges = np.asarray(table["edges"], dtype=float)
    count = np.asarray(table["count"], dtype=float)
    filled = count > 0
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig = Figure(figsize=(5.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.bar(centres[filled], np.asarray(table["accuracy"])[filled], width * 0.9, alpha=0.7, label="accuracy")
    top.plot(
        np.asarray(table["confidence"])[filled],
        np.asarray(table["accuracy"])[filled],
        "o-",
        color="black",
        markersize=3,
        label="accuracy at mean confidence",
    )
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy of the top class")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(centres, count / max(1.0, count.sum()), width * 0.9, color="tab:grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("share of images")
    _save(fig, path)


# --------------------------------------------------------------------------- multi-label


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def plot_ranked_bars(rows: Sequence[Mapping], path: str | Path, *, level: float) -> None:
    """mAP and macro ROC-AUC per row with their cluster-bootstrap intervals (hatched: baseline)."""
    fig, ax = _figure(max(5.0, 1.3 * len(rows) + 2), 4.0)
    x, width = np.arange(len(rows)), 0.38
    for offset, metric in zip((-width / 2, width / 2), multilabel.RANKED):
        values = np.array([np.nan if r[metric] is None else r[metric] for r in rows])
        bounds = np.array([r[f"{metric}_ci"] or [np.nan, np.nan] for r in rows], dtype=float)
        err = np.nan_to_num(np.abs(bounds.T - values))
        for bar, row in zip(
            ax.bar(
                x + offset, np.nan_to_num(values), width, yerr=err, capsize=3, label=multilabel.METRIC_LABELS[metric]
            ),
            rows,
        ):
            bar.set_hatch("//" if row["kind"] == "baseline" else "")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"mAP and macro ROC-AUC with {level:.0%} cluster-bootstrap CIs over videos")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_per_label_ap(document: dict[str, Any], path: str | Path) -> None:
    """Per-label AP of every model/ensemble row (bars) and of the label-frequency baseline (ticks: its
    AP is each label's test prevalence); labels without a positive test image are left empty."""
    table, labels = document["per_label"], document["per_label"]["labels"]
    names = [r["name"] for r in document["rows"] if r["kind"] != "baseline"]
    fig, ax = _figure(max(6.0, 0.5 * len(labels) * max(1, len(names)) ** 0.5 + 3), 4.5)
    x, width = np.arange(len(labels)), 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [np.nan if table["ap"][name][c] is None else table["ap"][name][c] for c in labels]
        ax.bar(x - 0.4 + (i + 0.5) * width, values, width, label=name)
    baseline = [
        np.nan if table["ap"][multilabel.BASELINE][c] is None else table["ap"][multilabel.BASELINE][c] for c in labels
    ]
    ax.hlines(baseline, x - 0.45, x + 0.45, colors="black", linewidth=2, label="label-frequency baseline")
    ax.set_xticks(x, [f"{c} (n={table['support'][c]})" for c in labels], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.set_title("Average precision per label (test support in brackets)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_label_counts(truth: np.ndarray, hot: np.ndarray, class_names: list[str], title: str, path: str | Path) -> None:
    """Per label: TP, FN, FP, TN counts of the thresholded decisions (pooled over seeds), shaded by
    their share of the label's images (the multi-label stand-in for a confusion matrix)."""
    hot = as_bool(hot, "decisions")
    truth = np.broadcast_to(as_bool(truth, "true multi-hot"), hot.shape).reshape(-1, len(class_names))
    hot = hot.reshape(-1, len(class_names))
    counts = np.stack([(truth & hot).sum(0), (truth & ~hot).sum(0), (~truth & hot).sum(0), (~truth & ~hot).sum(0)], 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure(6.0, min(14.0, 0.4 * len(class_names) + 2))
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, label="share of the label's images")
    ax.set_xticks(range(4), ["TP", "FN", "FP", "TN"])
    ax.set_yticks(range(len(class_names)), class_names)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    _save(fig, path)
