"""The paired tests of a comparison, either task, and their one Holm family.

Each pair of rows is tested on each tested score by the video swap permutation test (a task computes
its p-values: swapping two models' predictions video by video) with a cluster-bootstrap interval of
the difference, and with several folds or seeds also by the corrected resampled t-test (Nadeau &
Bengio 2003) on per-(seed, fold) scores. Every reported test is then Holm-adjusted as one family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quiltflow.compare import clusterstats, stats

SWAP_TEST = "video_swap_permutation"
T_TEST = "corrected_resampled_t"
TEST_NAMES = {SWAP_TEST: "video swap test", T_TEST: "corrected resampled t-test"}
# The smallest p a swap test with B swaps can return is 1/(B+1); Holm's first threshold is alpha/m.
# Swaps are raised until that p is this many times smaller, so any test of the family can reject.
SWAP_RESOLUTION_MARGIN = 10


@dataclass
class TestEntry:
    """One test of score(a) - score(b). The decision fields are filled in by :func:`decide`."""

    __test__ = False  # not a pytest test class, whatever its name

    a: str
    b: str
    metric: str
    test: str
    difference: float
    difference_ci: list[float] | None
    p_value: float
    t: float | None = None  # the t-test's statistic (None when not finite) and degrees of freedom
    df: int | None = None
    p_value_holm: float | None = None
    better: str | None = None
    verdict: str | None = None

    def to_dict(self, better_than: str | None = None) -> dict[str, Any]:
        """The document's entry; ``better_than`` names the key saying whether ``a`` beat the
        baseline (``better_than_majority``, ``better_than_baseline``), None in ``pairwise``."""
        entry: dict[str, Any] = {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "test": self.test,
            "difference": self.difference,
            "difference_ci": self.difference_ci,
            "p_value": self.p_value,
        }
        if self.test == T_TEST:
            entry.update(t=self.t, df=self.df)
        entry.update(
            p_value_holm=self.p_value_holm,
            significant=self.better is not None,
            better=self.better,
            verdict=self.verdict,
        )
        if better_than:
            entry[better_than] = self.better == self.a
        return entry


@dataclass(frozen=True)
class Evidence:
    """What the tests of a comparison draw on, per row name: point estimates, resampled scores
    [B, rows] (None: too few videos for intervals), the row's column in them, and per-(seed, fold)
    scores (None with one run); ``ratio`` n_test/n_train of the t-test, ``level`` of the intervals."""

    point: Mapping[str, Mapping[str, Any]]
    resampled: Mapping[str, np.ndarray] | None
    index: Mapping[str, int]
    fold_scores: Mapping[str, Mapping[str, np.ndarray]] | None
    ratio: float | None
    level: float


def _swap_entry(a: str, b: str, metric: str, evidence: Evidence, p_value: float) -> TestEntry:
    difference = evidence.point[a][metric] - evidence.point[b][metric]
    interval = None
    if evidence.resampled is not None:
        resampled = evidence.resampled[metric]
        paired = resampled[:, evidence.index[a]] - resampled[:, evidence.index[b]]
        interval = list(clusterstats.percentile_ci(paired, difference, evidence.level))
    return TestEntry(a, b, metric, SWAP_TEST, difference, interval, p_value)


def _t_test_entry(a: str, b: str, metric: str, evidence: Evidence) -> TestEntry:
    """Corrected resampled t-test of per-(seed, fold) score differences, with its interval."""
    from scipy.stats import t as student_t

    differences = evidence.fold_scores[a][metric] - evidence.fold_scores[b][metric]
    t_value, p_value, df = clusterstats.corrected_resampled_t(differences, evidence.ratio)
    spread = np.sqrt((1 / len(differences) + evidence.ratio) * differences.var(ddof=1))
    half = student_t.ppf(0.5 + evidence.level / 2, df) * spread
    mean = float(differences.mean())
    interval = [mean - float(half), mean + float(half)]
    t_value = t_value if np.isfinite(t_value) else None
    return TestEntry(a, b, metric, T_TEST, mean, interval, p_value, t=t_value, df=df)


def family_swaps(
    permutations: int, pairs: Sequence[tuple[str, str]], metrics: Sequence[str], evidence: Evidence, alpha: float
) -> int:
    """Video swaps per test: ``permutations``, raised for a large family. With 2,000 swaps and 126
    tests no swap test could survive Holm at 0.05 (smallest adjusted p 126/2001 = 0.063)."""
    tests = len(pairs) * len(metrics) * (1 if evidence.fold_scores is None else 2)
    return max(int(permutations), math.ceil(SWAP_RESOLUTION_MARGIN * tests / alpha) - 1)


def paired_test_entries(
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    evidence: Evidence,
    swap_p: Mapping[tuple[str, str], Mapping[str, float]],
) -> list[TestEntry]:
    """One entry per pair, score and test (the swap test always, the t-test with several folds or
    seeds); ``swap_p[(a, b)][metric]``: the swap test's p-values."""
    entries = []
    for a, b in pairs:
        for metric in metrics:
            entries.append(_swap_entry(a, b, metric, evidence, swap_p[(a, b)][metric]))
            if evidence.fold_scores is not None:
                entries.append(_t_test_entry(a, b, metric, evidence))
    return entries


def decide(entries: Sequence[TestEntry], alpha: float, labels: Mapping[str, str]) -> None:
    """Holm-adjust every reported test as one family, then give each its plain-words verdict
    (``labels``: the metrics' names in words)."""
    for entry, p_adjusted in zip(entries, stats.holm_adjust([e.p_value for e in entries])):
        entry.better, entry.verdict = stats.difference_verdict(
            entry.a,
            entry.b,
            labels[entry.metric],
            entry.difference,
            p_value=entry.p_value,
            p_adjusted=p_adjusted,
            alpha=alpha,
            test=TEST_NAMES[entry.test],
        )
        entry.p_value_holm = p_adjusted
