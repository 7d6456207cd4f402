"""A multiclass comparison document as a CSV table, as Markdown and as HTML (results/comparison.{csv,md,html}),
and the writing of either task's tables (the multi-label ones: compare.report_multilabel)."""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quiltflow.compare.mdhtml import markdown_to_html
from quiltflow.core.jsonio import write_json

METRICS_CAPTION = "Accuracy and macro F1 per model with cluster-bootstrap intervals over videos (hatched: baselines)."
CURVES_CAPTION = "Loss and accuracy per epoch of each model's first run (solid: training, dashed: validation)."
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1_macro": "macro F1"}
# The first twelve columns are the original contract; later ones were appended.
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
    "balanced_accuracy_ci_low",
    "balanced_accuracy_ci_high",
    "auc_macro",
    "auc_macro_ci_low",
    "auc_macro_ci_high",
    "pr_auc_macro",
    "ece",
    "video_accuracy",
    "video_accuracy_ci_low",
    "video_accuracy_ci_high",
    "design_effect",
    "accuracy_fold_mean",
    "accuracy_fold_sd",
]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _csv_row(r: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": r["name"], "kind": r["kind"], "weights": r["weights"], "n_test": r["n_test"]}
    for key in ("accuracy", "f1_macro", "balanced_accuracy", "auc_macro", "video_accuracy"):
        row[key] = _number(r[key])
        interval = r.get(f"{key}_ci") or [None, None]
        row[f"{key}_ci_low"], row[f"{key}_ci_high"] = _number(interval[0]), _number(interval[1])
    for key in ("f1_weighted", "pr_auc_macro", "ece", "design_effect", "accuracy_fold_mean", "accuracy_fold_sd"):
        row[key] = _number(r.get(key))
    return row


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One row per model and baseline (CI bounds as separate columns; empty = not defined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow(_csv_row(r))


def _ci(value: float | None, ci: Sequence[float] | None) -> str:
    """A score and its interval: "–" for an undefined score, "[n/a]" for a missing interval."""
    if value is None:
        return "–"
    if ci is None:
        return f"{value:.3f} [n/a]"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def difference_text(difference: float, ci: Sequence[float] | None) -> str:
    """A test's difference with its interval ("[n/a]" when too few videos gave none)."""
    interval = "n/a" if ci is None else f"{ci[0]:+.3f}, {ci[1]:+.3f}"
    return f"{difference:+.3f} [{interval}]"


def _optional(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _header(document: dict[str, Any]) -> list[str]:
    pct = f"{document['ci_level']:.0%}"
    folds = ""
    if document["folds"] > 1 or document["seeds"] > 1:
        folds = f" {document['folds']} fold(s) x {document['seeds']} seed(s): {document['pooling']}."
    return [
        "# Model comparison",
        "",
        f"{document['n_test']} test images in {document['n_groups']} videos, {len(document['class_names'])} classes."
        f"{folds} **The video is the unit**: frames of one video are near-copies, so intervals resample videos "
        f"({pct} percentile cluster bootstrap, {document['bootstrap_samples']} resamples, seed {document['seed']}; "
        "the same resamples for every row) and tests swap two models' predictions video by video "
        f"({document['permutations']} permutations"
        + (", plus the corrected resampled t-test over folds/seeds" if folds else "")
        + f"), alpha={document['alpha']:g}, Holm-adjusted over all {len(document['pairwise']) + len(document['vs_majority'])} "
        "tests as one family.",
        "",
        f"Design effect (cluster over image-level variance of accuracy, mean over models): "
        f"{_optional(document['design_effect'], 2)} — intervals are about its square root wider than "
        "image-level ones. Video accuracy: a video's prediction is the argmax of its frames' mean probability. "
        f"ECE: {document['ece_bins']} equal-width confidence bins. Macro AUC interval: first-order form of the same "
        "cluster bootstrap.",
        "",
        *_tta_note(document),
    ]


def _tta_note(document: dict[str, Any]) -> list[str]:
    if not any(r["kind"] == "tta" for r in document["rows"]):
        return []
    return [
        "Rows `{model}+tta` (kind tta): test-time augmentation, each test image's mean probability over its "
        "eight dihedral views (flips and 90-degree rotations), on the same test images; each is tested against "
        "its own model below (difference = TTA minus plain). They are not in the ensemble.",
        "",
    ]


def _table(document: dict[str, Any]) -> list[str]:
    pct = f"{document['ci_level']:.0%}"
    with_folds = any("accuracy_fold_mean" in r for r in document["rows"])
    columns = [
        "model",
        "kind",
        f"accuracy [{pct} CI]",
        f"balanced accuracy [{pct} CI]",
        f"macro F1 [{pct} CI]",
        f"macro AUC [{pct} CI]",
        "macro PR-AUC",
        "ECE",
        f"video accuracy [{pct} CI]",
        "design effect",
        "weighted F1",
        "weights",
        "n_test",
    ]
    if with_folds:
        columns.append("accuracy per fold (mean ± sd)")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in document["rows"]:
        cells = [
            r["name"],
            r["kind"],
            _ci(r["accuracy"], r["accuracy_ci"]),
            _ci(r["balanced_accuracy"], r["balanced_accuracy_ci"]),
            _ci(r["f1_macro"], r["f1_macro_ci"]),
            _ci(r["auc_macro"], r["auc_macro_ci"]),
            _optional(r["pr_auc_macro"]),
            _optional(r["ece"]),
            _ci(r["video_accuracy"], r["video_accuracy_ci"]),
            _optional(r["design_effect"], 2),
            f"{r['f1_weighted']:.3f}",
            str(r["weights"]),
            str(r["n_test"]),
        ]
        if with_folds:
            cells.append(f"{r['accuracy_fold_mean']:.3f} ± {r['accuracy_fold_sd']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _test_lines(tests: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for t in tests:
        difference = difference_text(t["difference"], t["difference_ci"])
        lines.append(f"- {t['verdict']}; {METRIC_LABELS[t['metric']]} difference {difference}.")
    return lines


def render_markdown(document: dict[str, Any]) -> str:
    """The comparison as Markdown: method, table, pairwise tests with verdicts, baseline tests, caveats."""
    lines = _header(document) + _table(document)
    lines += ["", "## Models against each other", ""]
    lines += _test_lines(document["pairwise"]) if document["pairwise"] else ["- Only one model: no pairwise test."]
    lines += ["", "## Models against the majority-class baseline", ""]
    lines += _test_lines(document["vs_majority"])
    if document["caveats"]:
        lines += ["", "## Caveats", ""]
        lines += [f"- **Caveat:** {c}" for c in document["caveats"]]
    return "\n".join(lines) + "\n"


def markdown_table(document: dict[str, Any]) -> str:
    """Just the metrics table of :func:`render_markdown` (printed to the job log)."""
    return "\n".join(_table(document)) + "\n"


def figure_html(path: str | Path, caption: str) -> str:
    """A PNG embedded as a data: URI with its caption (the HTML page stands alone)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" style="max-width:100%">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render_html(document: dict[str, Any], figures: Sequence[tuple[str | Path, str]] = ()) -> str:
    """:func:`render_markdown` as a self-contained HTML fragment (the report's landing page includes
    it; the metrics table has ``id="comparison-table"``), with ``figures`` (PNG path, caption)
    embedded as data: URIs after the table's section. The charset line keeps it readable on its own."""
    body = markdown_to_html(render_markdown(document), table_id="comparison-table")
    images = [figure_html(path, caption) for path, caption in figures]
    marker = "<h2>"  # the plots go right after the table, before the pairwise tests
    head, sep, tail = body.partition(marker)
    return '<meta charset="utf-8">\n' + head + "\n".join(images) + "\n" + sep + tail


def write_text(text: str, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def write_tables(
    document: dict[str, Any], json_path, csv_path, md_path, *, render=render_markdown, csv_writer=write_csv
) -> None:
    """The comparison as JSON, CSV and Markdown (whichever paths are given); a multi-label
    comparison passes its own ``render`` and ``csv_writer`` (compare.report_multilabel)."""
    if json_path:
        write_json(document, json_path)
    if csv_path:
        csv_writer(document["rows"], csv_path)
    if md_path:
        write_text(render(document), md_path)
