"""Which figures a comparison writes, per task, from its document and the plain models (TTA rows
get none). Paths are matched to models by position; a None path skips its figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quiltflow.compare import clusterstats, plots
from quiltflow.compare.multilabel import binary_events
from quiltflow.compare.rows import Model
from quiltflow.core.errors import UserError


@dataclass(frozen=True)
class PlotPaths:
    """Where the figures go: the summary plots, and per plain model a confusion (multi-label: label
    counts) and a reliability plot. ``ap_plot``: multi-label runs only."""

    metrics_plot: str | None = None
    curves_plot: str | None = None
    confusion_plots: Sequence[str] | None = None
    reliability_plots: Sequence[str] | None = None
    ap_plot: str | None = None


def _check_count(paths: Sequence[str], models: Sequence[Model], what: str) -> None:
    if len(paths) != len(models):
        raise UserError(f"compare_models: {len(paths)} {what} for {len(models)} models")


def _write_training_curves(models: Sequence[Model], history_paths: Sequence[str], path: str | None) -> None:
    if not path:
        return
    _check_count(history_paths, models, "history files")
    plots.plot_training_curves({m.name: plots.read_history(p) for m, p in zip(models, history_paths)}, path)


def write_multiclass_plots(
    document: dict, models: Sequence[Model], y_true: np.ndarray, history_paths: Sequence[str], paths: PlotPaths
) -> None:
    """Metric bars with CIs; per model a row-normalised confusion matrix and a reliability diagram
    (every seed's predictions); training curves."""
    if paths.metrics_plot:
        # Rows without intervals (too few videos) get NaN bounds: bars without error bars.
        no_ci = {f"{m}_ci": [np.nan, np.nan] for m in ("accuracy", "f1_macro")}
        rows = [r if r["accuracy_ci"] is not None else {**r, **no_ci} for r in document["rows"]]
        plots.plot_metric_bars(rows, paths.metrics_plot, level=document["ci_level"])
    ece = {r["name"]: r["ece"] for r in document["rows"]}
    if paths.confusion_plots is not None:
        _check_count(paths.confusion_plots, models, "confusion plot paths")
        for model, path in zip(models, paths.confusion_plots):
            title = f"{model.name}: confusion matrix (row-normalised)"
            plots.plot_confusion(model.doc["metrics"]["confusion_matrix"], document["class_names"], title, path)
    if paths.reliability_plots is not None:
        _check_count(paths.reliability_plots, models, "reliability plot paths")
        for model, path in zip(models, paths.reliability_plots):
            probs = model.probs.reshape(-1, model.probs.shape[-1])  # every seed's predictions
            table = clusterstats.reliability_bins(np.tile(y_true, model.probs.shape[0]), probs)
            plots.plot_reliability(table, f"{model.name}: reliability (ECE {ece[model.name]:.3f})", path)
    _write_training_curves(models, history_paths, paths.curves_plot)


def write_multilabel_plots(
    document: dict, models: Sequence[Model], truth: np.ndarray, history_paths: Sequence[str], paths: PlotPaths
) -> None:
    """mAP/AUC bars, per-label AP, training curves, and per plain model its label counts (the
    stand-in for a confusion matrix) and the reliability of every (image, label) probability."""
    if paths.metrics_plot:
        plots.plot_ranked_bars(document["rows"], paths.metrics_plot, level=document["ci_level"])
    if paths.ap_plot:
        plots.plot_per_label_ap(document, paths.ap_plot)
    ece = {r["name"]: r["ece"] for r in document["rows"]}
    if paths.confusion_plots is not None:
        _check_count(paths.confusion_plots, models, "confusion_plots paths")
        for model, path in zip(models, paths.confusion_plots):
            title = f"{model.name}: decisions per label"
            plots.plot_label_counts(truth, model.decisions, document["class_names"], title, path)
    if paths.reliability_plots is not None:
        _check_count(paths.reliability_plots, models, "reliability_plots paths")
        for model, path in zip(models, paths.reliability_plots):
            table = clusterstats.reliability_bins(
                *binary_events(model.probs, np.broadcast_to(truth, model.probs.shape))
            )
            title = f"{model.name}: P(label) reliability, every image x label (ECE {ece[model.name]:.3f})"
            plots.plot_reliability(table, title, path)
    _write_training_curves(models, history_paths, paths.curves_plot)
