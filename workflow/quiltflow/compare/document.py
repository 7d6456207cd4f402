"""What the comparison documents of both tasks share: the schema version, the pooling sentence,
row intervals, per-run spreads and the caveats on the number of test videos."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from quiltflow.compare import clusterstats

COMPARISON_SCHEMA_VERSION = 2
POOLING = (
    "out-of-fold predictions pooled per seed; each metric computed per seed on the same resampled videos "
    "and averaged over seeds (a row estimates one trained model, not a seed ensemble)"
)
FEW_VIDEOS = 30  # below this many test videos a caveat says the intervals are wide


@dataclass(frozen=True)
class FoldSpread:
    """Mean and sample standard deviation of a score over the (seed, fold) runs."""

    mean: float
    sd: float

    def to_dict(self, metric: str) -> dict[str, float]:
        return {f"{metric}_fold_mean": self.mean, f"{metric}_fold_sd": self.sd}


def row_interval(
    resampled: dict[str, np.ndarray] | None, metric: str, column: int, estimate: float | None, level: float
) -> list[float] | None:
    """A row's percentile interval of ``metric`` (its ``column`` of the resampled scores); None where
    the score is undefined or there are no resamples (too few videos)."""
    if estimate is None or resampled is None:
        return None
    return list(clusterstats.percentile_ci(resampled[metric][:, column], estimate, level))


def too_few_videos(n_groups: int, n_test: int) -> str:
    """The caveat of a test set with too few videos for any interval."""
    return (
        f"Only {n_groups} test video{'' if n_groups == 1 else 's'} ({n_test} images): the video is the unit, and "
        f"intervals and design effects need at least {clusterstats.MIN_GROUPS_FOR_INTERVALS} test videos, so none "
        "are given (n/a); the video swap tests cannot reach significance."
    )


def video_count_caveat(document: dict[str, Any]) -> str | None:
    """The caveat on the number of test videos: none at all for intervals, or few (wide intervals)."""
    n_groups, n_test = document["n_groups"], document["n_test"]
    if n_groups < clusterstats.MIN_GROUPS_FOR_INTERVALS:
        return too_few_videos(n_groups, n_test)
    if n_groups < FEW_VIDEOS:
        return (
            f"Only {n_groups} test videos ({n_test} images): the video is the unit, "
            "so intervals are wide and tests have little power."
        )
    return None
