"""Grad-CAM galleries (rule explain_model): each explained image beside its heat-map overlay.

matplotlib's object API with the Agg canvas, as in ``quiltflow.compare.plots``. No TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANEL_INCHES = 1.7  # side of one image panel
OVERLAY_ALPHA = 0.45
MISTAKES_PER_ROW = 4  # examples (two panels each) per row of the mistakes gallery
CAPTION_LABELS = 3  # true labels named in a multi-label caption


def _short_id(image_id: str, width: int = 20) -> str:
    name = Path(str(image_id)).name
    return name if len(name) <= width else name[: width - 1] + "…"


def caption(row: pd.Series, class_names: Sequence[str]) -> str:
    """Three lines under an overlay: id, true class, predicted class with its probability.

    A multi-label example (``true_labels``) shows all its true labels, the first
    ``CAPTION_LABELS`` then a count, and its top-scoring label."""
    true, pred = class_names[int(row["true_label"])], class_names[int(row["pred_label"])]
    labels = row.get("true_labels")
    if isinstance(labels, (list, tuple)):
        names = [class_names[int(k)] for k in labels]
        more = f" +{len(names) - CAPTION_LABELS}" if len(names) > CAPTION_LABELS else ""
        true = ", ".join(names[:CAPTION_LABELS]) + more
    return f"{_short_id(row['image_id'])}\ntrue: {true}\npred: {pred} ({row['prob']:.2f})"


def _draw_example(fig: Figure, grid, row_index: int, col: int, example: pd.Series, class_names):
    """Image and overlay of one example in two neighbouring cells of ``grid``; returns the image axes."""
    image, heat = example["image"], example["heat"]
    ax_image = fig.add_subplot(grid[row_index, 2 * col])
    ax_image.imshow(image, interpolation="nearest")
    ax_overlay = fig.add_subplot(grid[row_index, 2 * col + 1])
    ax_overlay.imshow(image, interpolation="nearest")
    ax_overlay.imshow(heat, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax_overlay.set_xlabel(caption(example, class_names), fontsize=7, loc="left")
    for ax in (ax_image, ax_overlay):
        ax.set_xticks([])
        ax.set_yticks([])
    return ax_image


def draw_gallery(
    rows: Sequence[tuple[str, pd.DataFrame]], class_names: Sequence[str], title: str, path: str | Path, columns: int
) -> None:
    """One figure row per (label, examples) pair; examples need image, heat, image_id, true_label,
    pred_label and prob. An empty row says so instead of leaving a gap."""
    columns = max(1, int(columns))
    fig = Figure(figsize=(2 * columns * PANEL_INCHES, len(rows) * (PANEL_INCHES + 0.9) + 0.6))
    grid = fig.add_gridspec(len(rows), 2 * columns, hspace=0.7, wspace=0.08)
    for r, (label, examples) in enumerate(rows):
        if examples.empty:
            ax = fig.add_subplot(grid[r, :])
            ax.axis("off")
            ax.text(0.0, 0.5, f"{label}: none on the test set", fontsize=9, va="center")
            continue
        first = [
            _draw_example(fig, grid, r, c, ex, class_names)
            for c, (_, ex) in enumerate(examples.iloc[:columns].iterrows())
        ]
        first[0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def class_gallery(examples: pd.DataFrame, class_names: Sequence[str], cls: int, title: str, path: str | Path) -> None:
    """The correct and the wrong examples of true class ``cls``: one row each. Multi-label
    examples say which gallery they were chosen for (``gallery_class``)."""
    key = "gallery_class" if "gallery_class" in examples.columns else "true_label"
    own = examples[examples[key] == cls]
    rows = [(kind, own[own["kind"] == kind]) for kind in ("correct", "wrong")]
    draw_gallery(rows, class_names, title, path, columns=max(1, max(len(r) for _, r in rows)))


def mistakes_gallery(mistakes: pd.DataFrame, class_names: Sequence[str], title: str, path: str | Path) -> None:
    """The most confident mistakes, ``MISTAKES_PER_ROW`` to a row, most confident first."""
    chunks = [mistakes.iloc[i : i + MISTAKES_PER_ROW] for i in range(0, len(mistakes), MISTAKES_PER_ROW)]
    ranks = [f"#{i * MISTAKES_PER_ROW + 1}-{i * MISTAKES_PER_ROW + len(chunk)}" for i, chunk in enumerate(chunks)]
    rows = list(zip(ranks, chunks)) or [("mistakes", mistakes)]
    draw_gallery(rows, class_names, title, path, columns=min(MISTAKES_PER_ROW, max(1, len(mistakes))))


def _save(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
