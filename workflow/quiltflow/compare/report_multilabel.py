"""A multi-label comparison document as Markdown, CSV and HTML (results/comparison.{md,csv,html}).

The multiclass tables are in compare.report; both write the same Markdown subset (compare.mdhtml).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quiltflow.compare.mdhtml import markdown_to_html
from quiltflow.compare.multilabel import METRIC_LABELS, WITH_CI
from quiltflow.compare.report import difference_text, figure_html

AP_CAPTION = "Average precision of each label per model; black ticks: the label-frequency baseline (test prevalence)."
METRICS_CAPTION = "mAP and macro ROC-AUC per row with cluster-bootstrap intervals over videos (hatched: baseline)."


def _cell(value: float | None, ci: Sequence[float] | str | None = None) -> str:
    """A score, with its interval if ``ci`` is one ("n/a": an interval column without an interval)."""
    if value is None:
        return "–"
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} [n/a]" if isinstance(ci, str) else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _scores_table(document: dict[str, Any]) -> list[str]:
    pct = f"{document['ci_level']:.0%}"
    columns = ["model", "kind", *(f"{METRIC_LABELS[m]} [{pct} CI]" for m in WITH_CI), "ECE", "weights", "n_test"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in document["rows"]:
        cells = [
            r["name"],
            r["kind"],
            *(_cell(r[m], r[f"{m}_ci"] or "n/a") for m in WITH_CI),
            _cell(r["ece"]),
            str(r["weights"]),
            str(r["n_test"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _per_label_lines(document: dict[str, Any]) -> list[str]:
    table = document["per_label"]
    names = list(table["ap"])
    lines = ["| label | support | train prevalence | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 3)]
    for label in table["labels"]:
        cells = [label, str(table["support"][label]), f"{table['train_prevalence'][label]:.3f}"]
        lines.append("| " + " | ".join(cells + [_cell(table["ap"][n][label]) for n in names]) + " |")
    return lines


def render_markdown(document: dict[str, Any]) -> str:
    """Method, scores table, per-label AP table, tests with verdicts, caveats."""
    tests = document["pairwise"] + document["vs_baseline"]
    lines = [
        "# Model comparison (multi-label)",
        "",
        f"{document['n_test']} test images in {document['n_groups']} videos, {len(document['class_names'])} labels "
        f"(mean {document['label_cardinality']:.2f} per image). **The video is the unit**: {document['ci_method']} "
        f"({document['bootstrap_samples']} resamples, seed {document['seed']}); tests: {document['test_method']} "
        f"({document['permutations']} permutations, {len(tests)} tests, alpha={document['alpha']:g}). "
        "mAP and macro ROC-AUC average the labels with a positive test image; ECE: every (image, label) "
        f"probability as a binary event, {document['ece_bins']} bins.",
        "",
        *_scores_table(document),
        "",
        "## Average precision per label",
        "",
        *_per_label_lines(document),
        "",
        "## Models against each other",
        "",
    ]
    lines += [_test_line(t) for t in document["pairwise"]] or ["- Only one model: no pairwise test."]
    lines += [
        "",
        "## Models against the label-frequency baseline",
        "",
        *(_test_line(t) for t in document["vs_baseline"]),
    ]
    lines += ["", "## Caveats", "", *(f"- **Caveat:** {c}" for c in document["caveats"])]
    return "\n".join(lines) + "\n"


def _test_line(t: dict[str, Any]) -> str:
    difference = difference_text(t["difference"], t["difference_ci"])
    return f"- {t['verdict']}; {METRIC_LABELS[t['metric']]} difference {difference}."


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One row per model/baseline: each score, its CI bounds (empty = not defined), ECE, weights, n_test."""
    columns = [
        "model",
        "kind",
        *(f"{m}{s}" for m in WITH_CI for s in ("", "_ci_low", "_ci_high")),
        "ece",
        "design_effect",
        "weights",
        "n_test",
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            line = {"model": r["name"], "kind": r["kind"], "weights": r["weights"], "n_test": r["n_test"]}
            for m in WITH_CI:
                low, high = r[f"{m}_ci"] or (None, None)
                line.update({m: r[m], f"{m}_ci_low": low, f"{m}_ci_high": high})
            line.update(ece=r["ece"], design_effect=r["design_effect"])
            writer.writerow(
                {k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for k, v in line.items()}
            )


def render_html(document: dict[str, Any], figures: Sequence[tuple[str | Path, str]] = ()) -> str:
    """The Markdown as an HTML fragment (table id comparison-table), the figures embedded at the end."""
    images = "".join(figure_html(path, caption) + "\n" for path, caption in figures)
    return (
        '<meta charset="utf-8">\n' + markdown_to_html(render_markdown(document), table_id="comparison-table") + images
    )
