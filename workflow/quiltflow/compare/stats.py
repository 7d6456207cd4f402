"""Statistics for the model comparison: the baselines' train prior, the Holm adjustment and verdicts.

NumPy/SciPy only: this module (and quiltflow.compare.multiclass) must never import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from quiltflow.core.errors import UserError

# --------------------------------------------------------------------------- baselines


def train_prior(train_counts: Mapping[str, int], class_names: Sequence[str]) -> np.ndarray:
    """Train class distribution in label-map order (classes absent from train get 0)."""
    unknown = sorted(set(train_counts) - set(class_names))
    if unknown:
        raise UserError(f"split_report class_counts.train: class {unknown[0]!r} is not in the label map")
    counts = np.array([int(train_counts.get(c, 0)) for c in class_names], dtype=np.float64)
    if counts.sum() <= 0:
        raise UserError("split_report class_counts.train: no training images")
    return counts / counts.sum()


def majority_class(train_counts: Mapping[str, int], class_names: Sequence[str]) -> int:
    """Index of the most frequent train class (ties: first in label-map order)."""
    return int(np.argmax(train_prior(train_counts, class_names)))


def stratified_predictions(
    y_true: np.ndarray, train_counts: Mapping[str, int], class_names: Sequence[str], *, seed: int
) -> np.ndarray:
    """Guess each test image's class at random with the train class frequencies (seeded)."""
    prior = train_prior(train_counts, class_names)
    # A stream of its own: the bootstrap resamples use default_rng(seed) and must stay independent of it.
    rng = np.random.default_rng([int(seed), 1])
    return rng.choice(len(class_names), size=len(y_true), p=prior).astype(np.int64)


def stratified_expected_accuracy(
    y_true: np.ndarray, train_counts: Mapping[str, int], class_names: Sequence[str]
) -> float:
    """Expected accuracy of the stratified-random baseline: sum_c p_train(c) * p_test(c)."""
    prior = train_prior(train_counts, class_names)
    test_freq = np.bincount(y_true, minlength=len(class_names)) / max(1, len(y_true))
    return float(prior @ test_freq)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over several tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def format_p(p: float) -> str:
    """Three significant digits; tiny p-values in scientific notation."""
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def difference_verdict(
    a: str,
    b: str,
    metric: str,
    difference: float,
    *,
    p_value: float,
    p_adjusted: float,
    alpha: float,
    test: str,
) -> tuple[str | None, str]:
    """(winner or None, plain-words sentence) for a paired test of score(A) - score(B) on ``metric``.

    The decision uses the Holm-adjusted p-value; the sentence shows both and names the test.
    """
    shown = f"{test}, p={format_p(p_value)}"
    if p_adjusted != p_value:
        shown += f", Holm-adjusted p={format_p(p_adjusted)}"
    if p_adjusted < alpha and difference != 0:
        winner, loser = (a, b) if difference > 0 else (b, a)
        return winner, f"{winner} is significantly better than {loser} on {metric} ({shown})"
    return None, f"no significant difference between {a} and {b} on {metric} ({shown})"
