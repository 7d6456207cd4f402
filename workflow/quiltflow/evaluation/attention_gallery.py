"""Attention galleries of a bag model (rule explain_attention, issue 27): for test videos, the
frames its attention weighted most and least, with their weights.

Videos: up to ``videos_per_class`` per true class (seeded), from the first run's predictions; per
video its ``TOP_K`` most and (of the rest) ``TOP_K`` least attended frames, decoded from the test
shards as the model's features saw them. matplotlib's object API with the Agg canvas. No
TensorFlow at import (the shards are read by ``quiltflow.evaluation.explain.read_test_images``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_label_map, write_json
from quiltflow.records.attention import read_attention
from quiltflow.records.predictions import read_predictions

TOP_K = 3  # most and least attended frames shown per video
PANEL_INCHES = 1.5


def select_videos(predictions: pd.DataFrame, videos_per_class: int, seed: int) -> pd.DataFrame:
    """Up to ``videos_per_class`` test videos of each true class (seeded), class by class."""
    rng = np.random.default_rng([int(seed), 27])
    chosen = []
    for label in sorted(predictions["true_label"].unique()):
        own = predictions[predictions["true_label"] == label].sort_values("group")
        take = rng.permutation(len(own))[: max(0, int(videos_per_class))]
        chosen.append(own.iloc[np.sort(take)])
    return pd.concat(chosen, ignore_index=True) if chosen else predictions.iloc[:0]


def extreme_frames(attention: pd.DataFrame, group: str, k: int = TOP_K) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the ``k`` most attended frames of ``group``, the ``k`` least attended of the others)."""
    frames = attention[attention["group"] == group].sort_values(["attention", "image_id"], ascending=[False, True])
    if frames.empty:
        raise UserError(f"attention: video {group} has no frames")
    top = frames.iloc[:k]
    return top, frames.iloc[k:].iloc[::-1].iloc[:k]


def draw_attention_gallery(
    videos: pd.DataFrame,
    attention: pd.DataFrame,
    images: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    title: str,
    path: str | Path,
) -> None:
    """One figure row per video: its most attended frames, then its least attended, each captioned
    with its weight; the row label names the video, its true and predicted class."""
    rows = max(1, len(videos))
    fig = Figure(figsize=(2 * TOP_K * PANEL_INCHES, rows * (PANEL_INCHES + 0.6) + 0.6))
    grid = fig.add_gridspec(rows, 2 * TOP_K, hspace=0.6, wspace=0.08)
    for r, (_, video) in enumerate(videos.iterrows()):
        top, bottom = extreme_frames(attention, video["group"])
        for c in range(2 * TOP_K):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            frames, index = (top, c) if c < TOP_K else (bottom, c - TOP_K)
            if index < len(frames):
                frame = frames.iloc[index]
                ax.imshow(images[frame["image_id"]])
                ax.set_title(f"{'top' if c < TOP_K else 'low'} a={frame['attention']:.2f}", fontsize=7)
            else:
                ax.axis("off")
            if c == 0:
                true, pred = class_names[int(video["true_label"])], class_names[int(video["pred_label"])]
                ax.set_ylabel(f"{str(video['group'])[:14]}\ntrue {true}\npred {pred}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def explain_attention(
    *,
    attention_path: str,
    predictions_path: str,
    index_paths: Sequence[str],
    label_map_path: str,
    gallery_path: str,
    index_path: str,
    model_name: str,
    videos_per_class: int,
    seed: int,
) -> dict[str, Any]:
    """Write the attention gallery of one bag model's first run and its index JSON (the videos and
    frames shown, with their weights); return the index."""
    from quiltflow.evaluation.explain import read_test_images

    class_names = read_label_map(label_map_path)
    attention, predictions = read_attention(attention_path), read_predictions(predictions_path)
    videos = select_videos(predictions, videos_per_class, seed)
    shown = {g: extreme_frames(attention, g) for g in videos["group"]}
    ids = sorted({i for top, bottom in shown.values() for i in (*top["image_id"], *bottom["image_id"])})
    images = read_test_images(index_paths, ids)
    title = f"{model_name}: most and least attended frames of test videos"
    draw_attention_gallery(videos, attention, images, class_names, title, gallery_path)
    index = {
        "model": model_name,
        "top_k": TOP_K,
        "videos": [
            {
                "group": str(g),
                "top": dict(zip(top["image_id"], top["attention"].astype(float))),
                "least": dict(zip(bottom["image_id"], bottom["attention"].astype(float))),
            }
            for g, (top, bottom) in shown.items()
        ],
    }
    write_json(index, index_path)
    return index
