"""Rule compare_models: the entry point of the model comparison, either task.

Reads the label map (its ``task`` picks the comparison), the split report and every model's metrics
and predictions once; builds the document (quiltflow.compare.multiclass or .multilabel); writes the
tables first, then the plots, then the HTML page that embeds them. No TensorFlow (tests check it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quiltflow.compare import multiclass, multilabel, report, report_multilabel
from quiltflow.compare.figures import PlotPaths, write_multiclass_plots, write_multilabel_plots
from quiltflow.compare.rows import Model, mark_tta, plain_models
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map
from quiltflow.core.tasks import MULTILABEL, read_task
from quiltflow.records.split_report import SplitReport

__all__ = ["compare_models"]


@dataclass(frozen=True)
class _Inputs:
    """The files of one comparison: the models' metrics and predictions (the plain models first,
    then their TTA variants in the same order), the plain models' histories."""

    metrics_paths: list[str]
    predictions_paths: list[str]
    history_paths: Sequence[str]
    n_plain: int
    tta_metrics_paths: Sequence[str]

    def mark_tta(self, models: list[Model]) -> list[Model]:
        return mark_tta(models, self.n_plain, self.tta_metrics_paths)


@dataclass(frozen=True)
class _Outputs:
    json_path: str | None
    csv_path: str | None
    md_path: str | None
    html_path: str | None
    plots: PlotPaths


def _write_html(outputs: _Outputs, render, captions: Sequence[tuple[str | None, str]]) -> None:
    """Last: the page embeds the summary plots (those with a path)."""
    if outputs.html_path:
        report.write_text(render([(path, caption) for path, caption in captions if path]), outputs.html_path)


def _compare_multiclass(
    inputs: _Inputs, split: SplitReport, class_names: list[str], outputs: _Outputs, settings: dict[str, Any]
) -> dict[str, Any]:
    train_counts, split_ratio = split.train_class_counts(), split.test_train_ratio()
    models, test_set = multiclass.load_multiclass_models(inputs.metrics_paths, inputs.predictions_paths, class_names)
    models = inputs.mark_tta(models)
    document = multiclass.build_comparison(
        models, test_set, class_names, train_counts, split_ratio=split_ratio, **settings
    )
    report.write_tables(document, outputs.json_path, outputs.csv_path, outputs.md_path)  # tables first, then plots
    write_multiclass_plots(document, plain_models(models), test_set.y_true, inputs.history_paths, outputs.plots)
    captions = [
        (outputs.plots.metrics_plot, report.METRICS_CAPTION),
        (outputs.plots.curves_plot, report.CURVES_CAPTION),
    ]
    _write_html(outputs, lambda figures: report.render_html(document, figures), captions)
    return document


def _compare_multilabel(
    inputs: _Inputs, split: SplitReport, class_names: list[str], outputs: _Outputs, settings: dict[str, Any]
) -> dict[str, Any]:
    prevalence, split_ratio = multilabel.train_prevalence(split, class_names), split.test_train_ratio()
    models, test_set = multilabel.load_multilabel_models(inputs.metrics_paths, inputs.predictions_paths, class_names)
    models = inputs.mark_tta(models)
    truth = test_set.multi_hot
    document = multilabel.build_multilabel_comparison(
        models, test_set, truth, class_names, prevalence, split_ratio=split_ratio, **settings
    )
    report.write_tables(
        document,
        outputs.json_path,
        outputs.csv_path,
        outputs.md_path,
        render=report_multilabel.render_markdown,
        csv_writer=report_multilabel.write_csv,
    )
    write_multilabel_plots(document, plain_models(models), truth, inputs.history_paths, outputs.plots)
    captions = [
        (outputs.plots.metrics_plot, report_multilabel.METRICS_CAPTION),
        (outputs.plots.ap_plot, report_multilabel.AP_CAPTION),
        (outputs.plots.curves_plot, report.CURVES_CAPTION),
    ]
    _write_html(outputs, lambda figures: report_multilabel.render_html(document, figures), captions)
    return document


def compare_models(
    metrics_paths: Sequence[str],
    predictions_paths: Sequence[str],
    history_paths: Sequence[str],
    split_report_path: str,
    label_map_path: str,
    *,
    seed: int,
    bootstrap_samples: int,
    alpha: float,
    permutations: int = 2000,
    ensemble: bool = True,
    synthetic: bool = False,
    narration_labels: bool = True,
    tta_metrics_paths: Sequence[str] = (),
    tta_predictions_paths: Sequence[str] = (),
    json_path: str | None = None,
    csv_path: str | None = None,
    md_path: str | None = None,
    html_path: str | None = None,
    metrics_plot: str | None = None,
    curves_plot: str | None = None,
    confusion_plots: Sequence[str] | None = None,
    reliability_plots: Sequence[str] | None = None,
    ap_plot: str | None = None,
) -> dict[str, Any]:
    """Compare every model with each other and with baselines; write whichever outputs are given.
    Files are matched by position: ``metrics_paths[i]``, ``predictions_paths[i]``,
    ``history_paths[i]``, ``confusion_plots[i]`` and ``reliability_plots[i]`` belong to the same
    model. CIs have level ``1 - alpha``. ``tta_metrics_paths``/``tta_predictions_paths``: each
    model's test-time augmentation variant (same order), rows ``{model}+tta`` of kind ``tta``, each
    tested against its own model; no plots of their own. Returns the comparison document (also
    written to ``json_path``). Multi-label (the label map's task): ``ap_plot``, the per-label AP
    figure, and ``narration_labels``: the lists are Quilt's per-video lists (a caveat)."""
    multilabel_task = read_task(label_map_path) == MULTILABEL
    if not 0 < alpha < 1:
        raise UserError(f"params alpha: must be in (0, 1), got {alpha}")
    class_names = read_label_map(label_map_path)
    split = SplitReport.read(split_report_path)
    inputs = _Inputs(
        [*metrics_paths, *tta_metrics_paths],
        [*predictions_paths, *tta_predictions_paths],
        history_paths,
        len(metrics_paths),
        tta_metrics_paths,
    )
    plot_paths = PlotPaths(metrics_plot, curves_plot, confusion_plots, reliability_plots, ap_plot)
    outputs = _Outputs(json_path, csv_path, md_path, html_path, plot_paths)
    settings = {
        "seed": seed,
        "bootstrap_samples": bootstrap_samples,
        "permutations": permutations,
        "alpha": alpha,
        "ensemble": ensemble,
        "synthetic": synthetic,
    }
    if multilabel_task:
        settings["narration_labels"] = narration_labels  # Quilt's per-video lists: a caveat
        return _compare_multilabel(inputs, split, class_names, outputs, settings)
    return _compare_multiclass(inputs, split, class_names, outputs, settings)
