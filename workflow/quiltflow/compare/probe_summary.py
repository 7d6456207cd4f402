"""Summary of the probe stage (issue 26): each frozen representation's linear probe and k-NN at each
label fraction, scored with the comparison's own statistics (no TensorFlow).

Rows are (representation, method, fraction). Their scores are seed-averaged like the comparison's
models (``quiltflow.compare.multiclass``): one set of video-bootstrap resamples serves every row, so
intervals are paired; representations are compared at each (fraction, method) by the video swap
permutation test on balanced accuracy, every test in one Holm family (``compare.paired_tests``).
Multi-label runs are scored and tested with ``quiltflow.compare.multilabel``'s own code (video units,
weighted AP/AUC under the same resamples, swap test) on mAP; the plot shows mAP.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from quiltflow.compare import clusterstats, multilabel, paired_tests, plots
from quiltflow.compare.multiclass import cluster_bootstrap, groups_of, point_estimates, row_counts, swap_p_values
from quiltflow.compare.rows import Row
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json, read_label_map, write_json
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, read_task
from quiltflow.records.predictions import multi_hot_matrix, probability_matrix

SUMMARY_METRICS = ("balanced_accuracy", "accuracy", "f1_macro", "auc_macro")
TESTED_METRIC = "balanced_accuracy"  # the headline score: one test per pair keeps the family small
LABELS = {"balanced_accuracy": "balanced accuracy"}
# Multi-label rows: the comparison's multi-label scores (decisions at the probe's 0.5); mAP is tested.
MULTILABEL_METRICS = ("map_macro", "auc_macro", "f1_macro", "f1_micro", "subset_accuracy")
MULTILABEL_TESTED = "map_macro"
PLOTTED_LABELS = {"balanced_accuracy": "balanced accuracy", "map_macro": "mAP (macro)"}


class _Images(NamedTuple):
    """What ``multiclass.groups_of`` reads of a test set."""

    groups: np.ndarray
    y_true: np.ndarray


@dataclass(frozen=True)
class ProbeRow:
    """One (representation, method, fraction) row: per-seed probabilities and decisions."""

    representation: str
    method: str
    fraction: float
    row: Row

    @property
    def cell(self) -> tuple[str, float]:
        return self.method, self.fraction


def row_name(representation: str, method: str, fraction: float) -> str:
    return f"{representation}/{method}@{fraction:g}"


def _reference(frame: pd.DataFrame) -> pd.DataFrame:
    """The test images (image_id order) of the first seed: every row must predict exactly these."""
    first = frame[(frame["seed"] == frame["seed"].min())]
    first = first[(first["method"] == first["method"].iloc[0]) & (first["fraction"] == first["fraction"].iloc[0])]
    columns = ["image_id", "group", "true_label"] + (["true_multi_hot"] if "true_multi_hot" in frame else [])
    return first.sort_values("image_id")[columns].reset_index(drop=True)


def read_rows(paths: Mapping[str, str], n_classes: int) -> tuple[list[ProbeRow], pd.DataFrame]:
    """Every row of the representations' probe tables, aligned on one reference test set."""
    rows, reference = [], None
    for representation, path in paths.items():
        frame = pd.read_parquet(path)
        if frame.empty:
            raise UserError(f"{path}: no predictions")
        reference = _reference(frame) if reference is None else reference
        for (method, fraction), cell in frame.groupby(["method", "fraction"], sort=True):
            probs, decisions = [], []
            for seed, part in cell.groupby("seed", sort=True):
                part = part.sort_values("image_id")
                if not np.array_equal(part["image_id"].to_numpy(str), reference["image_id"].to_numpy(str)):
                    raise UserError(f"{path}: {method} {fraction:g} seed {seed} predicts other test images")
                matrix = probability_matrix(part, source=str(path))
                if matrix.shape[1] != n_classes:
                    raise UserError(f"{path}: {matrix.shape[1]} probabilities, label map has {n_classes}")
                probs.append(matrix)
                decisions.append(_decisions(part, str(path)))
            name = row_name(representation, method, float(fraction))
            rows.append(
                ProbeRow(
                    representation, method, float(fraction), Row(name, "probe", probs, decisions, None, None, True)
                )
            )
    return rows, reference


def _decisions(part: pd.DataFrame, source: str) -> np.ndarray:
    """Class decisions [n] (multiclass) or the multi-hot decisions [n, C] as bool (multi-label)."""
    if "pred_multi_hot" in part.columns:
        return multi_hot_matrix(part, "pred_multi_hot", source=source).astype(bool)
    return part["pred_label"].to_numpy(np.int64)


def _interval(resampled: dict | None, metric: str, column: int, estimate, level: float) -> list[float] | None:
    if resampled is None or estimate is None or metric not in resampled:
        return None
    return list(clusterstats.percentile_ci(resampled[metric][:, column], estimate, level))


def score_rows(rows: Sequence[ProbeRow], reference: pd.DataFrame, *, samples: int, seed: int, level: float):
    """(summary rows, counts by name, groups, point by name, resampled [B, rows] or None)."""
    y_true = reference["true_label"].to_numpy(np.int64)
    k = len(rows[0].row.probs[0][0])
    groups = groups_of(_Images(reference["group"].to_numpy(str), y_true), k)
    counts = {r.row.name: row_counts(r.row, y_true, groups) for r in rows}
    point = {r.row.name: point_estimates(r.row, counts[r.row.name], y_true, groups) for r in rows}
    resampled = None
    if groups.n_groups >= clusterstats.MIN_GROUPS_FOR_INTERVALS:
        resampled = cluster_bootstrap([counts[r.row.name] for r in rows], groups, samples=samples, seed=seed)
    table = []
    for column, r in enumerate(rows):
        entry = {"name": r.row.name, "representation": r.representation, "method": r.method, "fraction": r.fraction}
        for metric in SUMMARY_METRICS:
            estimate = point[r.row.name][metric]
            entry[metric] = estimate
            entry[f"{metric}_ci"] = _interval(resampled, metric, column, estimate, level)
        table.append(entry)
    return table, counts, groups, point, resampled


def _number(value) -> float | None:
    """JSON-safe float: None for NaN (a score undefined on this test set)."""
    return None if value is None or not np.isfinite(value) else float(value)


def score_rows_multilabel(rows: Sequence[ProbeRow], reference: pd.DataFrame, *, samples: int, seed: int, level: float):
    """Multi-label rows scored by ``compare.multilabel``: (summary rows, video units, point by name,
    resampled [B, rows] or None)."""
    truth = multi_hot_matrix(reference, "true_multi_hot", source="probe reference").astype(bool)
    units = multilabel.VideoUnits(_Images(reference["group"].to_numpy(str), truth), truth)
    stacked = [replace(r.row, probs=np.stack(r.row.probs), decisions=np.stack(r.row.decisions)) for r in rows]
    ones = np.ones((1, units.n_groups))
    point = {row.name: {k: v[0] for k, v in units.scores(row.probs, row.decisions, ones).items()} for row in stacked}
    resampled = None
    if units.n_groups >= clusterstats.MIN_GROUPS_FOR_INTERVALS:
        resampled = multilabel.bootstrap_rows(stacked, units, samples=samples, seed=seed)
    table = []
    for column, r in enumerate(rows):
        entry = {"name": r.row.name, "representation": r.representation, "method": r.method, "fraction": r.fraction}
        for metric in MULTILABEL_METRICS:
            estimate = _number(point[r.row.name][metric])
            entry[metric] = estimate
            entry[f"{metric}_ci"] = _interval(resampled, metric, column, estimate, level)
        table.append(entry)
    return table, units, point, resampled, stacked


def _pairs(rows: Sequence[ProbeRow]) -> list[tuple[str, str]]:
    """Every pair of representations at the same (method, fraction)."""
    cells: dict[tuple[str, float], list[str]] = {}
    for r in rows:
        cells.setdefault(r.cell, []).append(r.row.name)
    return [pair for names in cells.values() for pair in itertools.combinations(names, 2)]


def paired_tests_multilabel(scored, *, permutations: int, seed: int, alpha: float, rows) -> tuple[list[dict], int]:
    """(video swap tests of mAP between representations at each (method, fraction), one Holm
    family; swaps per test)."""
    _, units, point, resampled, stacked = scored
    pairs = _pairs(rows)
    if not pairs:
        return [], permutations
    by_name = {row.name: row for row in stacked}
    index = {row.name: i for i, row in enumerate(stacked)}
    evidence = paired_tests.Evidence(point, resampled, index, None, None, 1.0 - alpha)
    swaps = paired_tests.family_swaps(permutations, pairs, [MULTILABEL_TESTED], evidence, alpha)
    swap_p = multilabel.swap_p_values(pairs, by_name, units, point, permutations=swaps, seed=seed)
    entries = paired_tests.paired_test_entries(pairs, [MULTILABEL_TESTED], evidence, swap_p)
    paired_tests.decide(entries, alpha, multilabel.METRIC_LABELS)
    return [entry.to_dict() for entry in entries], swaps


def paired_tests_of(
    rows: Sequence[ProbeRow], scored, *, permutations: int, seed: int, alpha: float
) -> tuple[list[dict], int]:
    """(video swap tests between representations at each (method, fraction), one Holm family;
    swaps per test)."""
    _, counts, groups, point, resampled = scored
    pairs = _pairs(rows)
    if not pairs:
        return [], permutations
    index = {r.row.name: i for i, r in enumerate(rows)}
    evidence = paired_tests.Evidence(point, resampled, index, None, None, 1.0 - alpha)
    swaps = paired_tests.family_swaps(permutations, pairs, [TESTED_METRIC], evidence, alpha)
    swap_p = swap_p_values(pairs, counts, groups, permutations=swaps, seed=seed)
    entries = paired_tests.paired_test_entries(pairs, [TESTED_METRIC], evidence, swap_p)
    paired_tests.decide(entries, alpha, LABELS)
    return [entry.to_dict() for entry in entries], swaps


def _grid_edges(chosen: Sequence[float | None], grid: Sequence[float]) -> dict[str, int]:
    """How many linear fits chose the C grid's smallest or largest value: the best C may lie beyond
    the grid (the strongest L2 winning most fits says: extend probe.c_grid lower)."""
    chosen = [c for c in chosen if c is not None]
    return {
        "fits": len(chosen),
        "lowest": sum(np.isclose(c, min(grid)) for c in chosen),
        "highest": sum(np.isclose(c, max(grid)) for c in chosen) if len(grid) > 1 else 0,
    }


def _budget_sizes(budget_paths: Mapping[str, str]) -> dict[tuple[str, float], dict[str, Any]]:
    """Mean training videos and images per (representation, fraction) over folds and seeds, and the
    linear fits' C at an edge of the grid (``c_at_grid_edge``, one count per (fold, seed))."""
    sizes = {}
    for representation, path in budget_paths.items():
        document = read_json(path, "probe budgets")
        grid = document.get("settings", {}).get("c_grid")
        frame = pd.DataFrame(document["budgets"])
        for fraction, part in frame.groupby("fraction"):
            sizes[(representation, float(fraction))] = {
                "train_videos": float(part["n_videos"].mean()),
                "train_images": float(part["n_images"].mean()),
            }
            if grid and "c" in part:
                edges = _grid_edges([c.get("linear") for c in part["c"]], grid)
                sizes[(representation, float(fraction))]["c_at_grid_edge"] = {k: int(v) for k, v in edges.items()}
    return sizes


def _markdown(table: Sequence[Mapping], tests: Sequence[Mapping], level: float, metrics: Sequence[str]) -> str:
    def cell(value, ci) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = [
        f"# Frozen representations: linear probe and k-NN by label budget ({level:.0%} video-bootstrap CIs)",
        "",
        "| representation | method | fraction | videos | images | " + " | ".join(metrics) + " |",
        "|---|---|---|---|---|" + "---|" * len(metrics),
    ]
    for r in table:
        scores = " | ".join(cell(r[m], r[f"{m}_ci"]) for m in metrics)
        lines.append(
            f"| {r['representation']} | {r['method']} | {r['fraction']:g} | {r.get('train_videos', 0):.0f} "
            f"| {r.get('train_images', 0):.0f} | {scores} |"
        )
    edges = [r for r in table if r["method"] == "linear" and r.get("c_at_grid_edge")]
    edges = [r for r in edges if r["c_at_grid_edge"]["lowest"] or r["c_at_grid_edge"]["highest"]]
    if edges:
        lines += ["", "## Linear probe: C at an edge of probe.c_grid (the best C may lie beyond it)", ""]
        lines += [
            f"- {r['name']}: smallest C in {r['c_at_grid_edge']['lowest']}, largest in "
            f"{r['c_at_grid_edge']['highest']} of {r['c_at_grid_edge']['fits']} fits"
            for r in edges
        ]
    lines += ["", "## Paired video-level tests (one Holm family)", ""]
    lines += [f"- {t['verdict']}" for t in tests] or ["- one representation: nothing to compare"]
    return "\n".join(lines) + "\n"


def plot_label_efficiency(
    table: Sequence[Mapping], path: str | Path, *, level: float, metric: str = "balanced_accuracy"
) -> None:
    """``metric`` (balanced accuracy; multi-label: mAP) vs label fraction (log x), one line per
    representation and method."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    frame = pd.DataFrame(table)
    for (representation, method), part in frame.groupby(["representation", "method"], sort=True):
        part = part.sort_values("fraction")
        values = part[metric].to_numpy(float)
        cis = [ci if ci else [v, v] for ci, v in zip(part[f"{metric}_ci"], values)]
        err = np.abs(np.array(cis, dtype=float).T - values)
        ax.errorbar(part["fraction"], values, yerr=err, marker="o", capsize=3, label=f"{representation} ({method})")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of training videos labelled (log scale)")
    ax.set_ylabel(f"{PLOTTED_LABELS[metric]} (test)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Label efficiency with {level:.0%} video-bootstrap CIs")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    plots._save(fig, path)


def _score_and_test(rows, reference, *, multi: bool, seed: int, samples: int, permutations: int, alpha: float):
    """(summary rows, tests, swaps per test, test videos, metrics) of either task, with that task's
    comparison code."""
    level = 1.0 - alpha
    if multi:
        scored = score_rows_multilabel(rows, reference, samples=samples, seed=seed, level=level)
        tests, swaps = paired_tests_multilabel(scored, permutations=permutations, seed=seed, alpha=alpha, rows=rows)
        return scored[0], tests, swaps, int(scored[1].n_groups), MULTILABEL_METRICS
    scored = score_rows(rows, reference, samples=samples, seed=seed, level=level)
    tests, swaps = paired_tests_of(rows, scored, permutations=permutations, seed=seed, alpha=alpha)
    return scored[0], tests, swaps, int(scored[2].n_groups), SUMMARY_METRICS


def _write_csv(table: Sequence[Mapping], metrics: Sequence[str], path: str | Path) -> None:
    """The summary rows flat: each interval as ``{metric}_low``/``_high``, grid edges as columns."""
    flat = pd.DataFrame(table)
    for metric in metrics:
        cis = flat.pop(f"{metric}_ci")
        flat[f"{metric}_low"] = [ci[0] if ci else None for ci in cis]
        flat[f"{metric}_high"] = [ci[1] if ci else None for ci in cis]
    if "c_at_grid_edge" in flat:
        edges = flat.pop("c_at_grid_edge")
        for side in ("lowest", "highest"):
            flat[f"c_at_grid_{side}"] = [e.get(side) if isinstance(e, dict) else None for e in edges]
    flat.to_csv(path, index=False)


def summarise_probe(
    prediction_paths: Mapping[str, str],
    budget_paths: Mapping[str, str],
    label_map_path: str,
    *,
    seed: int,
    bootstrap_samples: int,
    permutations: int,
    alpha: float,
    outputs: Mapping[str, str],
) -> dict[str, Any]:
    """Rule probe_summary: score, test, write ``outputs`` (json, csv, md, plot); returns the document."""
    class_names = read_label_map(label_map_path)
    multi = read_task(label_map_path) == MULTILABEL
    rows, reference = read_rows(prediction_paths, len(class_names))
    table, tests, swaps, n_videos, metrics = _score_and_test(
        rows,
        reference,
        multi=multi,
        seed=seed,
        samples=bootstrap_samples,
        permutations=permutations,
        alpha=alpha,
    )
    sizes = _budget_sizes(budget_paths)
    for entry in table:
        entry.update(sizes.get((entry["representation"], entry["fraction"]), {}))
        if entry["method"] != "linear":
            entry.pop("c_at_grid_edge", None)  # only the linear probe has a C
    document = {
        "settings": {
            "seed": seed,
            "bootstrap_samples": bootstrap_samples,
            "permutations": swaps,  # raised above the setting for a large family (paired_tests.family_swaps)
            "permutations_requested": permutations,
            "alpha": alpha,
        },
        "task": MULTILABEL if multi else MULTICLASS,
        "metrics": list(metrics),
        "tested_metric": MULTILABEL_TESTED if multi else TESTED_METRIC,
        "classes": class_names,
        "test_images": len(reference),
        "test_videos": n_videos,
        "rows": table,
        "tests": tests,
    }
    write_json(document, outputs["json"])
    _write_csv(table, metrics, outputs["csv"])
    Path(outputs["md"]).write_text(_markdown(table, tests, 1.0 - alpha, metrics), encoding="utf-8")
    plot_label_efficiency(table, outputs["plot"], level=1.0 - alpha, metric=document["tested_metric"])
    return document
