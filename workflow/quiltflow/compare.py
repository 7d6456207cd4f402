"""Rule compare_models: a model comparison a reviewer can trust.

Every model is compared on the same test images against two baselines fitted on the train label
distribution, with bootstrap confidence intervals and McNemar's exact test, and the verdicts are
written in plain words. Works from the metrics JSON and predictions Parquet files alone: this
module must never import TensorFlow (tests check it in a fresh interpreter).

``results/comparison.json`` keys: ``schema_version``, ``n_test``, ``class_names``,
``test_class_counts``, ``train_class_counts``, ``synthetic``, ``seed``, ``bootstrap_samples``,
``alpha``, ``ci_level``, ``rows`` (one per model then ``majority_baseline``, ``stratified_baseline``:
``name, kind, accuracy, accuracy_ci, f1_macro, f1_macro_ci, balanced_accuracy, f1_weighted, weights,
n_test`` + extras), ``pairwise`` and ``vs_majority`` (McNemar: ``a, b, a_correct_b_wrong,
a_wrong_b_correct, n_discordant, p_value, p_value_holm, significant, better, verdict``; plus
``accuracy_difference, accuracy_difference_ci`` in ``pairwise`` and ``better_than_majority`` in
``vs_majority``), ``caveats``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import f1_score

from quiltflow import plots, stats
from quiltflow.errors import UserError
from quiltflow.jsonio import read_json, read_label_map, write_json
from quiltflow.metrics import balanced_accuracy, load_metrics_document, read_predictions

log = logging.getLogger("quiltflow.compare")

COMPARISON_SCHEMA_VERSION = 1
MAJORITY = "majority_baseline"
STRATIFIED = "stratified_baseline"
CSV_COLUMNS = [
    "model",
    "kind",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "f1_macro",
    "f1_macro_ci_low",
    "f1_macro_ci_high",
    "balanced_accuracy",
    "f1_weighted",
    "weights",
    "n_test",
]


class _TestSet(NamedTuple):
    """What one model was evaluated on, and the files that say so."""

    metrics_path: str
    predictions_path: str
    manifest_sha256: str
    image_ids: np.ndarray
    y_true: np.ndarray


def _read_predictions_of(
    doc: dict[str, Any], metrics_path: str, predictions_path: str, class_names: list[str]
) -> tuple[_TestSet, np.ndarray]:
    """A model's predictions sorted by image_id, checked against its metrics document and the
    label map; return (its test set, y_pred)."""
    if doc["metrics"]["class_names"] != class_names:
        raise UserError(f"metrics file {metrics_path}: class_names differ from the label map (stale file?)")
    frame = read_predictions(predictions_path).sort_values("image_id", kind="stable")
    if len(frame) != doc["metrics"]["n_test"]:
        raise UserError(
            f"predictions file {predictions_path}: {len(frame)} rows but {metrics_path} says "
            f"n_test={doc['metrics']['n_test']} (stale file?)"
        )
    ids = frame["image_id"].astype(str).to_numpy()
    y_true = frame["true_label"].to_numpy(np.int64)
    y_pred = frame["pred_label"].to_numpy(np.int64)
    if ((y_pred < 0) | (y_pred >= len(class_names))).any():
        raise UserError(f"predictions file {predictions_path}: pred_label outside the label map")
    test_set = _TestSet(metrics_path, predictions_path, doc["dataset"]["sha256"], ids, y_true)
    return test_set, y_pred


def _check_same_test_set(first: _TestSet, other: _TestSet) -> None:
    """McNemar pairs outcomes image by image: every model must have seen the same test images."""
    if len(other.image_ids) != len(first.image_ids) or not np.array_equal(other.image_ids, first.image_ids):
        diff = sorted(set(other.image_ids).symmetric_difference(first.image_ids))
        where = f"e.g. image_id {diff[0]}" if diff else "a duplicated image_id"
        raise UserError(
            f"predictions file {other.predictions_path}: test images differ from {first.predictions_path} ({where})"
        )
    if not np.array_equal(other.y_true, first.y_true):
        row = int(np.flatnonzero(other.y_true != first.y_true)[0])
        raise UserError(
            f"predictions file {other.predictions_path}: true_label of image_id {other.image_ids[row]} differs"
        )
    if other.manifest_sha256 != first.manifest_sha256:
        raise UserError(
            f"metrics file {other.metrics_path}: test manifest fingerprint differs from "
            f"{first.metrics_path} (models evaluated on different test sets)"
        )


def _load_models(
    metrics_paths: Sequence[str], predictions_paths: Sequence[str], class_names: list[str]
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Load each model's metrics + predictions, aligned on image_id; return (models, y_true)."""
    if not metrics_paths:
        raise UserError("compare_models: no models to compare (config models is empty?)")
    if len(metrics_paths) != len(predictions_paths):
        raise UserError(
            f"compare_models: {len(metrics_paths)} metrics files but {len(predictions_paths)} predictions files"
        )
    models: list[dict[str, Any]] = []
    test_sets: list[_TestSet] = []
    for metrics_path, predictions_path in zip(metrics_paths, predictions_paths):
        doc = load_metrics_document(metrics_path)
        name = doc["model"]
        if any(m["name"] == name for m in models):
            raise UserError(f"metrics file {metrics_path}: model {name!r} listed twice")
        test_set, y_pred = _read_predictions_of(doc, metrics_path, predictions_path, class_names)
        if test_sets:
            _check_same_test_set(test_sets[0], test_set)
        test_sets.append(test_set)
        accuracy = stats.accuracy(test_set.y_true, y_pred)
        if abs(accuracy - doc["metrics"]["accuracy"]) > 1e-9:
            raise UserError(
                f"metrics file {metrics_path}: accuracy {doc['metrics']['accuracy']:.6f} does not "
                f"match {predictions_path} ({accuracy:.6f}); re-run evaluate_model"
            )
        models.append({"name": name, "kind": "model", "doc": doc, "y_pred": y_pred})
    return models, test_sets[0].y_true


def _row(
    name: str,
    kind: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    k: int,
    *,
    weights: str,
    seed: int,
    samples: int,
    level: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    boot = stats.bootstrap_metrics(y_true, y_pred, k, samples=samples, seed=seed, level=level)
    row = {
        "name": name,
        "kind": kind,
        "accuracy": boot.accuracy,
        "accuracy_ci": list(boot.accuracy_ci),
        "f1_macro": boot.f1_macro,
        "f1_macro_ci": list(boot.f1_macro_ci),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "weights": weights,
        "n_test": int(len(y_true)),
    }
    row.update(extra or {})
    return row


def _test_dict(result: stats.McNemarResult, p_adjusted: float, alpha: float) -> dict[str, Any]:
    winner, sentence = stats.verdict(result, alpha, p_adjusted=p_adjusted)
    return {
        "a": result.a,
        "b": result.b,
        "a_correct_b_wrong": result.a_only_correct,
        "a_wrong_b_correct": result.b_only_correct,
        "n_discordant": result.n_discordant,
        "p_value": result.p_value,
        "p_value_holm": p_adjusted,
        "significant": winner is not None,
        "better": winner,
        "verdict": sentence,
    }


def _read_train_counts(split_report_path: str) -> dict[str, Any]:
    split_report = read_json(split_report_path, "split report")
    try:
        return split_report["class_counts"]["train"]
    except (KeyError, TypeError):
        message = f"split report {split_report_path}: missing key class_counts.train"
        raise UserError(message) from None


def _model_extras(doc: dict[str, Any]) -> dict[str, Any]:
    """What a model row carries beyond the metrics: architecture, loss and timings."""
    return {
        "architecture": doc["architecture"],
        "loss": doc["metrics"]["loss"],
        "train_seconds": doc["timing"]["train_seconds"],
        "eval_seconds": doc["timing"]["eval_seconds"],
    }


def _metric_rows(
    models: list[dict[str, Any]],
    y_true: np.ndarray,
    class_names: list[str],
    train_counts: dict[str, Any],
    bootstrap: dict[str, Any],
) -> tuple[list[dict[str, Any]], np.ndarray, str]:
    """One row per model, then the majority and stratified baselines (both fitted on the train
    label distribution); also return the majority baseline's predictions and class name.
    ``bootstrap`` holds the keyword arguments ``seed``, ``samples`` and ``level`` of ``_row``."""
    k = len(class_names)

    def row(name: str, kind: str, y_pred: np.ndarray, weights: str, extra: dict) -> dict:
        return _row(name, kind, y_true, y_pred, k, weights=weights, **bootstrap, extra=extra)

    majority_pred = stats.majority_predictions(y_true, train_counts, class_names)
    majority_name = class_names[stats.majority_class(train_counts, class_names)]
    stratified_pred = stats.stratified_predictions(y_true, train_counts, class_names, seed=bootstrap["seed"])
    expected = stats.stratified_expected_accuracy(y_true, train_counts, class_names)
    rows = [row(m["name"], "model", m["y_pred"], m["doc"]["weights"], _model_extras(m["doc"])) for m in models]
    rows.append(row(MAJORITY, "baseline", majority_pred, "none", {"predicts": majority_name}))
    rows.append(row(STRATIFIED, "baseline", stratified_pred, "none", {"expected_accuracy": expected}))
    return rows, majority_pred, majority_name


def _pairwise_tests(correct: dict[str, np.ndarray], alpha: float, bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    """McNemar between every two models (Holm within the family), with the accuracy difference."""
    pairs = [stats.mcnemar_exact(correct[a], correct[b], a=a, b=b) for a, b in combinations(correct, 2)]
    pairwise = []
    for result, p_adj in zip(pairs, stats.holm_adjust([r.p_value for r in pairs])):
        entry = _test_dict(result, p_adj, alpha)
        diff, diff_ci = stats.bootstrap_accuracy_difference(correct[result.a], correct[result.b], **bootstrap)
        entry.update({"accuracy_difference": diff, "accuracy_difference_ci": list(diff_ci)})
        pairwise.append(entry)
    return pairwise


def _majority_tests(correct: dict[str, np.ndarray], majority_correct: np.ndarray, alpha: float) -> list[dict[str, Any]]:
    """McNemar of every model against the majority-class baseline (Holm within the family)."""
    tests = [stats.mcnemar_exact(correct[m], majority_correct, a=m, b=MAJORITY) for m in correct]
    vs_majority = []
    for result, p_adj in zip(tests, stats.holm_adjust([r.p_value for r in tests])):
        entry = _test_dict(result, p_adj, alpha)
        entry["better_than_majority"] = entry["better"] == result.a
        vs_majority.append(entry)
    return vs_majority


def _caveats(synthetic: bool, vs_majority: list[dict[str, Any]], majority_name: str, n_test: int) -> list[str]:
    caveats = []
    if synthetic:
        caveats.append(
            "These results come from the synthetic demo data set: they test the pipeline, not any "
            "model's ability to classify histopathology."
        )
    for entry in vs_majority:
        if not entry["better_than_majority"]:
            caveats.append(
                f"{entry['a']} is not significantly better than always predicting the majority "
                f"class ({majority_name}): {entry['verdict']}."
            )
    if n_test < 100:
        caveats.append(f"Only {n_test} test images: confidence intervals are wide and tests have little power.")
    return caveats


def build_comparison(
    models: list[dict[str, Any]],
    y_true: np.ndarray,
    class_names: list[str],
    train_counts: dict[str, Any],
    *,
    seed: int,
    bootstrap_samples: int,
    alpha: float,
    synthetic: bool = False,
) -> dict[str, Any]:
    """The comparison document of loaded models (see the module docstring); reads and writes
    nothing. ``models`` are ``{"name", "kind", "doc", "y_pred"}`` dicts on the test images
    ``y_true``; CIs have level ``1 - alpha``."""
    level = 1.0 - alpha
    bootstrap = {"seed": seed, "samples": bootstrap_samples, "level": level}
    rows, majority_pred, majority_name = _metric_rows(models, y_true, class_names, train_counts, bootstrap)
    correct = {m["name"]: m["y_pred"] == y_true for m in models}
    pairwise = _pairwise_tests(correct, alpha, bootstrap)
    vs_majority = _majority_tests(correct, majority_pred == y_true, alpha)
    test_counts = np.bincount(y_true, minlength=len(class_names)).astype(int).tolist()
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "n_test": len(y_true),
        "class_names": class_names,
        "test_class_counts": dict(zip(class_names, test_counts)),
        "train_class_counts": {c: int(train_counts.get(c, 0)) for c in class_names},
        "synthetic": bool(synthetic),
        "seed": int(seed),
        "bootstrap_samples": int(bootstrap_samples),
        "alpha": float(alpha),
        "ci_level": level,
        "rows": rows,
        "pairwise": pairwise,
        "vs_majority": vs_majority,
        "caveats": _caveats(synthetic, vs_majority, majority_name, len(y_true)),
    }


def _write_plots(
    document: dict[str, Any],
    models: list[dict[str, Any]],
    history_paths: Sequence[str],
    *,
    metrics_plot: str | None,
    curves_plot: str | None,
    confusion_plots: Sequence[str] | None,
) -> None:
    """Metric bars with CIs, one row-normalised confusion matrix per model, training curves."""
    if metrics_plot:
        plots.plot_metric_bars(document["rows"], metrics_plot, level=document["ci_level"])
    if confusion_plots is not None:
        if len(confusion_plots) != len(models):
            raise UserError(f"compare_models: {len(confusion_plots)} confusion plot paths for {len(models)} models")
        for model, path in zip(models, confusion_plots):
            title = f"{model['name']}: confusion matrix (row-normalised)"
            matrix = model["doc"]["metrics"]["confusion_matrix"]
            plots.plot_confusion(matrix, document["class_names"], title, path)
    if curves_plot:
        if len(history_paths) != len(models):
            raise UserError(f"compare_models: {len(history_paths)} history files for {len(models)} models")
        histories = {m["name"]: plots.read_history(p) for m, p in zip(models, history_paths)}
        plots.plot_training_curves(histories, curves_plot)


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
    synthetic: bool = False,
    json_path: str | None = None,
    csv_path: str | None = None,
    md_path: str | None = None,
    metrics_plot: str | None = None,
    curves_plot: str | None = None,
    confusion_plots: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compare every model with each other and with baselines; write whichever outputs are given.

    Files are matched by position: ``metrics_paths[i]``, ``predictions_paths[i]``,
    ``history_paths[i]`` and ``confusion_plots[i]`` belong to the same model. CIs have level
    ``1 - alpha``. Returns the comparison document (also written to ``json_path``).
    """
    if not 0 < alpha < 1:
        raise UserError(f"params alpha: must be in (0, 1), got {alpha}")
    class_names = read_label_map(label_map_path)
    train_counts = _read_train_counts(split_report_path)
    models, y_true = _load_models(metrics_paths, predictions_paths, class_names)
    document = build_comparison(
        models,
        y_true,
        class_names,
        train_counts,
        seed=seed,
        bootstrap_samples=bootstrap_samples,
        alpha=alpha,
        synthetic=synthetic,
    )
    # Tables first, then plots: the order the rule's outputs were always written in.
    if json_path:
        write_json(document, json_path)
    if csv_path:
        write_csv(document["rows"], csv_path)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(render_markdown(document))
    _write_plots(
        document,
        models,
        history_paths,
        metrics_plot=metrics_plot,
        curves_plot=curves_plot,
        confusion_plots=confusion_plots,
    )
    return document


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One row per model and baseline (CI bounds as separate columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "model": r["name"],
                    "kind": r["kind"],
                    "accuracy": f"{r['accuracy']:.6f}",
                    "accuracy_ci_low": f"{r['accuracy_ci'][0]:.6f}",
                    "accuracy_ci_high": f"{r['accuracy_ci'][1]:.6f}",
                    "f1_macro": f"{r['f1_macro']:.6f}",
                    "f1_macro_ci_low": f"{r['f1_macro_ci'][0]:.6f}",
                    "f1_macro_ci_high": f"{r['f1_macro_ci'][1]:.6f}",
                    "balanced_accuracy": f"{r['balanced_accuracy']:.6f}",
                    "f1_weighted": f"{r['f1_weighted']:.6f}",
                    "weights": r["weights"],
                    "n_test": r["n_test"],
                }
            )


def _ci(value: float, ci: Sequence[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def render_markdown(document: dict[str, Any]) -> str:
    """The comparison as Markdown: table, pairwise tests with verdicts, baseline tests, caveats."""
    pct = f"{document['ci_level']:.0%}"
    lines = [
        "# Model comparison",
        "",
        f"{document['n_test']} test images, {len(document['class_names'])} classes. Intervals: {pct} "
        f"percentile bootstrap over test images ({document['bootstrap_samples']} resamples, seed "
        f"{document['seed']}). Tests: McNemar's exact test on the same test images, alpha={document['alpha']:g}, "
        "Holm-adjusted within each family of tests.",
        "",
        f"| model | kind | accuracy [{pct} CI] | macro F1 [{pct} CI] | balanced accuracy | weighted F1 | weights | n_test |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in document["rows"]:
        lines.append(
            f"| {r['name']} | {r['kind']} | {_ci(r['accuracy'], r['accuracy_ci'])} | "
            f"{_ci(r['f1_macro'], r['f1_macro_ci'])} | {r['balanced_accuracy']:.3f} | {r['f1_weighted']:.3f} | "
            f"{r['weights']} | {r['n_test']} |"
        )
    lines += ["", "## Models against each other", ""]
    if document["pairwise"]:
        for t in document["pairwise"]:
            d, ci = t["accuracy_difference"], t["accuracy_difference_ci"]
            lines.append(
                f"- {t['verdict']}. {t['a']} right/{t['b']} wrong on {t['a_correct_b_wrong']} images, the reverse "
                f"on {t['a_wrong_b_correct']}; accuracy difference {d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]."
            )
    else:
        lines.append("- Only one model: no pairwise test.")
    lines += ["", "## Models against the majority-class baseline", ""]
    for t in document["vs_majority"]:
        lines.append(f"- {t['verdict']} ({t['a_correct_b_wrong']} vs {t['a_wrong_b_correct']} discordant images).")
    if document["caveats"]:
        lines += ["", "## Caveats", ""]
        lines += [f"- **Caveat:** {c}" for c in document["caveats"]]
    return "\n".join(lines) + "\n"


def markdown_table(document: dict[str, Any]) -> str:
    """Just the metrics table of :func:`render_markdown` (printed to the job log)."""
    return "\n".join(line for line in render_markdown(document).splitlines() if line.startswith("|")) + "\n"
