"""``splits/split_report.json`` (written by data.splits): images, images per class and videos per bucket.

The one reader of the file. Buckets are ``train``/``val``/``test`` (holdout) or ``fold{f}a``/``fold{f}b``
(k folds; which buckets a run trains, validates and tests on is core.cv.run_buckets). ``class_counts``
count the labels an image carries (one label per image: images per class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quiltflow.core.cv import run_buckets
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import read_json


@dataclass(frozen=True)
class SplitReport:
    """What the split stage counted; ``path`` names the file in error messages."""

    path: str
    folds: int = 1
    counts: dict[str, Any] = field(default_factory=dict)
    class_counts: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> SplitReport:
        report = read_json(path, "split report")
        return cls(
            path=str(path),
            folds=int(report.get("folds", 1)),
            # Absent or null blocks read as empty: the accessors below name the missing bucket.
            counts=report.get("counts") or {},
            class_counts=report.get("class_counts") if isinstance(report.get("class_counts"), dict) else {},
            groups=report.get("groups") or {},
        )

    def run_plans(self) -> list[dict[str, list[str]]]:
        """Each run's buckets (``train``, ``val``, ``test``): one run for a holdout, one per fold."""
        return [run_buckets(fold, self.folds) for fold in range(self.folds)]

    def train_buckets(self) -> list[str]:
        """Every run's training buckets in run order (a bucket once per run that trains on it)."""
        return [bucket for plan in self.run_plans() for bucket in plan["train"]]

    def class_counts_in(self, buckets: Sequence[str]) -> dict[str, int]:
        """Images per class summed over ``buckets`` (repeats count again), classes in file order."""
        counts: dict[str, int] = {}
        for bucket in buckets:
            if not isinstance(self.class_counts.get(bucket), dict):
                raise UserError(f"split report {self.path}: missing key class_counts.{bucket}")
            for name, n in self.class_counts[bucket].items():
                counts[name] = counts.get(name, 0) + int(n)
        return counts

    def train_class_counts(self) -> dict[str, int]:
        """Training class counts of the comparison's baselines. Holdout: the train bucket. k folds:
        summed over every run's training buckets, i.e. the average training distribution of the k
        runs (each run's prior comes from its own training buckets only)."""
        return self.class_counts_in(self.train_buckets())

    def images_in(self, buckets: Sequence[str], purpose: str) -> int:
        """Images summed over ``buckets``; a bucket without a count is an error naming ``purpose``."""
        missing = [bucket for bucket in buckets if not isinstance(self.counts.get(bucket), int | float)]
        if missing:
            raise UserError(f"split report {self.path}: missing key counts.{missing[0]} ({purpose})")
        return sum(self.counts[bucket] for bucket in buckets)

    def test_train_ratio(self) -> float | None:
        """Mean n_test/n_train over the runs, n_train counting a run's training buckets only (not its
        validation half-fold); None without image counts for every run's test and training buckets."""
        sizes = [
            [sum(self.counts.get(b, 0) for b in plan[part]) for part in ("test", "train")] for plan in self.run_plans()
        ]
        if not all(test and train for test, train in sizes):
            return None  # e.g. counts.test absent: 0 would pass for a real ratio
        return float(np.mean([test / train for test, train in sizes]))
