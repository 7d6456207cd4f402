"""quiltflow.compare.stats (baselines, Holm adjustment, verdicts) and the image-level references of
tests/support_stats.py (bootstrap CIs, McNemar's exact test)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import support_stats  # noqa: E402
from quiltflow.compare import stats  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402

CLASSES = ["a", "b", "c"]


def outcomes(n_a_only: int, n_b_only: int, n_both: int = 5, n_neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Correct/incorrect vectors with the given discordant counts."""
    a = [1] * n_a_only + [0] * n_b_only + [1] * n_both + [0] * n_neither
    b = [0] * n_a_only + [1] * n_b_only + [1] * n_both + [0] * n_neither
    return np.array(a, bool), np.array(b, bool)


def test_mcnemar_exact_known_case():
    a, b = outcomes(1, 9)
    result = support_stats.mcnemar_exact(a, b, a="A", b="B")
    assert (result.a_only_correct, result.b_only_correct, result.n_discordant) == (1, 9, 10)
    assert result.p_value == pytest.approx(2 * binom.cdf(1, 10, 0.5))
    assert result.p_value == pytest.approx(0.021484375)
    winner, sentence = support_stats.verdict(result, 0.05)
    assert winner == "B"
    assert sentence == "B is significantly better than A (p=0.0215)"


def test_mcnemar_no_difference_cases():
    same = support_stats.mcnemar_exact(*outcomes(0, 0), a="A", b="B")
    assert same.p_value == 1.0
    assert support_stats.verdict(same, 0.05) == (None, "no significant difference between A and B (p=1)")
    balanced = support_stats.mcnemar_exact(*outcomes(4, 4))
    assert balanced.p_value == pytest.approx(1.0)
    weak = support_stats.mcnemar_exact(*outcomes(6, 1), a="A", b="B")  # p = 0.125
    assert support_stats.verdict(weak, 0.05)[0] is None
    with pytest.raises(UserError, match="A vs B"):
        support_stats.mcnemar_exact(np.ones(3, bool), np.ones(4, bool), a="A", b="B")


def test_verdict_uses_holm_adjusted_p_when_given():
    result = support_stats.mcnemar_exact(*outcomes(1, 9), a="A", b="B")
    winner, sentence = support_stats.verdict(result, 0.05, p_adjusted=0.064)
    assert winner is None and "Holm-adjusted p=0.064" in sentence and "p=0.0215" in sentence


def test_holm_adjust():
    assert stats.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm_adjust([0.5]) == [0.5]
    assert stats.holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_vectorised_macro_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    for k, n in ((2, 30), (3, 50), (6, 40)):  # k=6, n=40: some classes absent from true or pred
        y_true = rng.integers(0, k, n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, k - 1, n))
        expected = f1_score(y_true, y_pred, average="macro", zero_division=0)
        assert support_stats.macro_f1(y_true, y_pred, k) == pytest.approx(expected)


def test_bootstrap_is_seeded_and_contains_estimate():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, (y_true + 1) % 3)
    first = support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=500, seed=7)
    again = support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=500, seed=7)
    other = support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=500, seed=8)
    assert first == again
    assert first.accuracy_ci != other.accuracy_ci
    for value, (low, high) in ((first.accuracy, first.accuracy_ci), (first.f1_macro, first.f1_macro_ci)):
        assert low <= value <= high
    # 95% interval of a proportion near 0.7 with n=200 is about +-0.064: wide but not absurd.
    width = first.accuracy_ci[1] - first.accuracy_ci[0]
    assert 0.08 < width < 0.18
    assert first.accuracy == pytest.approx(np.mean(y_true == y_pred))
    assert first.f1_macro == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_bootstrap_chunking_does_not_change_results(monkeypatch):
    y_true = np.array([0, 1, 2, 0, 1, 2, 0, 1] * 5)
    y_pred = np.array([0, 1, 1, 0, 2, 2, 0, 0] * 5)
    whole = support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=100, seed=3)
    monkeypatch.setattr(support_stats, "_CHUNK_ELEMENTS", 7 * len(y_true))  # 7 resamples per chunk
    assert support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=100, seed=3) == whole


def test_bootstrap_degenerate_interval_contains_estimate():
    y = np.zeros(5, dtype=int)
    result = support_stats.bootstrap_metrics(y, y, 2, samples=50, seed=0)
    assert result.accuracy_ci == (1.0, 1.0) and result.f1_macro_ci == (1.0, 1.0)


def test_paired_accuracy_difference():
    a, b = outcomes(30, 5, n_both=50, n_neither=15)
    diff, (low, high) = support_stats.bootstrap_accuracy_difference(a, b, samples=400, seed=0)
    assert diff == pytest.approx(0.25)
    assert 0 < low <= diff <= high


def test_baselines_from_train_distribution():
    counts = {"a": 10, "b": 30, "c": 30}  # tie b/c: first in label-map order wins
    assert stats.majority_class(counts, CLASSES) == 1
    y_true = np.array([0, 1, 2, 2])
    assert support_stats.majority_predictions(y_true, counts, CLASSES).tolist() == [1, 1, 1, 1]
    # Expected stratified accuracy = sum p_train * p_test = (1/7)(1/4) + (3/7)(1/4) + (3/7)(2/4).
    assert stats.stratified_expected_accuracy(y_true, counts, CLASSES) == pytest.approx(10 / 28)
    draw = stats.stratified_predictions(np.zeros(20000, int), counts, CLASSES, seed=1)
    assert np.array_equal(draw, stats.stratified_predictions(np.zeros(20000, int), counts, CLASSES, seed=1))
    assert np.bincount(draw, minlength=3) / len(draw) == pytest.approx([1 / 7, 3 / 7, 3 / 7], abs=0.015)


def test_baseline_bad_counts():
    with pytest.raises(UserError, match="'z'"):
        stats.train_prior({"a": 1, "z": 2}, CLASSES)
    with pytest.raises(UserError, match="no training images"):
        stats.train_prior({"a": 0}, CLASSES)


def test_difference_verdict_decides_on_the_holm_adjusted_p():
    winner, sentence = stats.difference_verdict(
        "A", "B", "balanced accuracy", -0.1, p_value=0.001, p_adjusted=0.004, alpha=0.05, test="video swap test"
    )
    assert winner == "B"
    assert (
        sentence
        == "B is significantly better than A on balanced accuracy (video swap test, p=0.001, Holm-adjusted p=0.004)"
    )
    winner, sentence = stats.difference_verdict(
        "A", "B", "accuracy", 0.2, p_value=0.02, p_adjusted=0.08, alpha=0.05, test="video swap test"
    )
    assert winner is None and sentence.startswith("no significant difference between A and B on accuracy")
