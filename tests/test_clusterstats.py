"""quiltflow.compare.clusterstats: video-level (cluster) bootstrap, swap permutation test, corrected t-test,
AUC with per-video influence, calibration; and the design effect on clustered fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import support_stats  # noqa: E402
from quiltflow.compare import clusterstats, multiclass  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402


def test_scores_from_counts_match_sklearn():
    rng = np.random.default_rng(0)
    for k, n in ((2, 40), (4, 120), (6, 30)):  # k=6, n=30: classes absent from true or predicted labels
        y_true = rng.integers(0, k, n)
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k - 1, n))
        codes = rng.integers(0, 7, n)
        hit = y_true == y_pred
        true_n = clusterstats.counts_per_group(codes, y_true, 7, k).sum(axis=0)
        correct_n = clusterstats.counts_per_group(codes[hit], y_true[hit], 7, k).sum(axis=0)
        pred_n = clusterstats.counts_per_group(codes, y_pred, 7, k).sum(axis=0)
        scores = clusterstats.scores_from_counts(true_n, correct_n, pred_n)
        assert scores["accuracy"] == accuracy_score(y_true, y_pred)
        with pytest.warns(UserWarning) if len(set(y_pred) - set(y_true)) else _no_warning():
            expected_balanced = balanced_accuracy_score(y_true, y_pred)
        assert scores["balanced_accuracy"] == pytest.approx(expected_balanced)
        assert scores["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_group_weights_draw_groups_with_replacement_and_are_seeded():
    chunks = list(clusterstats.group_weight_chunks(50, 300, seed=3))
    weights = np.concatenate(chunks)
    assert weights.shape == (300, 50) and np.all(weights.sum(axis=1) == 50)
    assert weights.mean() == pytest.approx(1.0) and weights.var() == pytest.approx(1 - 1 / 50, rel=0.1)
    assert np.array_equal(weights, np.concatenate(list(clusterstats.group_weight_chunks(50, 300, seed=3))))
    with pytest.raises(UserError, match="bootstrap_samples"):
        next(clusterstats.group_weight_chunks(5, 0, seed=0))


def _clustered_outcomes(n_videos: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, y_true, y_pred): near-identical frames, so a video's frames are all right or all wrong."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_videos), frames)
    y_true = np.repeat(rng.integers(0, 3, n_videos), frames)
    video_right = rng.random(n_videos) < 0.7
    y_pred = np.where(np.repeat(video_right, frames), y_true, (y_true + 1) % 3)
    return codes, y_true, y_pred


def _cluster_accuracy_ci(codes, y_true, y_pred, samples: int, seed: int):
    n_groups = codes.max() + 1
    correct = np.bincount(codes, weights=(y_true == y_pred).astype(float), minlength=n_groups)
    images = np.bincount(codes, minlength=n_groups).astype(float)
    sums = clusterstats.resampled_sums(
        np.stack([correct, images], 1), clusterstats.group_weight_chunks(n_groups, samples, seed)
    )
    resampled = sums[:, 0] / sums[:, 1]
    estimate = float(np.mean(y_true == y_pred))
    return estimate, clusterstats.percentile_ci(resampled, estimate, 0.95), resampled


def test_duplicated_frames_widen_the_interval_by_the_root_of_the_design_effect():
    codes, y_true, y_pred = _clustered_outcomes(n_videos=200, frames=10, seed=1)
    estimate, (low, high), resampled = _cluster_accuracy_ci(codes, y_true, y_pred, 4000, seed=0)
    image_level = support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=4000, seed=0)
    deff = clusterstats.design_effect(resampled, estimate, len(y_true))
    assert deff == pytest.approx(10, rel=0.2)  # identical frames: deff = m = 10
    ratio = (high - low) / (image_level.accuracy_ci[1] - image_level.accuracy_ci[0])
    assert ratio == pytest.approx(np.sqrt(deff), rel=0.1)


def test_one_image_per_video_agrees_with_the_image_bootstrap():
    codes, y_true, y_pred = _clustered_outcomes(n_videos=2000, frames=1, seed=2)
    estimate, (low, high), resampled = _cluster_accuracy_ci(codes, y_true, y_pred, 4000, seed=0)
    image_level = support_stats.bootstrap_metrics(y_true, y_pred, 3, samples=4000, seed=5)
    assert clusterstats.design_effect(resampled, estimate, len(y_true)) == pytest.approx(1.0, abs=0.1)
    assert low == pytest.approx(image_level.accuracy_ci[0], abs=0.006)
    assert high == pytest.approx(image_level.accuracy_ci[1], abs=0.006)


def _swap_p(codes, y_true, pred_a, pred_b, k, permutations, seed):
    """The comparison's video swap test on one pair (one seed)."""
    n_groups = codes.max() + 1
    true_counts = clusterstats.counts_per_group(codes, y_true, n_groups, k)
    groups = multiclass.Groups(codes, n_groups, k, true_counts, true_counts.argmax(axis=1))
    counts = {}
    for name, pred in (("a", pred_a), ("b", pred_b)):
        hit = pred == y_true
        counts[name] = {
            "correct": clusterstats.counts_per_group(codes[hit], y_true[hit], n_groups, k)[None],
            "predicted": clusterstats.counts_per_group(codes, pred, n_groups, k)[None],
        }
    return multiclass.swap_p_values([("a", "b")], counts, groups, permutations=permutations, seed=seed)[("a", "b")]


def test_swap_test_keeps_its_level_under_clustered_null_and_mcnemar_does_not():
    """Two models with the same error rate whose errors cluster within videos: the video-level test
    rejects about alpha of the time; McNemar's test, counting frames as independent, far more."""
    rng = np.random.default_rng(11)
    n_videos, frames, simulations, alpha = 40, 8, 200, 0.05
    codes = np.repeat(np.arange(n_videos), frames)
    rejections = {"swap": 0, "mcnemar": 0}
    for sim in range(simulations):
        y_true = np.repeat(rng.integers(0, 3, n_videos), frames)
        # Each model has its own per-video difficulty: errors are correlated within a video.
        preds = []
        for _ in range(2):
            p_right = np.repeat(rng.beta(2, 1, n_videos), frames)
            preds.append(np.where(rng.random(len(codes)) < p_right, y_true, (y_true + 1) % 3))
        p = _swap_p(codes, y_true, preds[0], preds[1], 3, permutations=200, seed=sim)
        rejections["swap"] += p["accuracy"] < alpha
        rejections["mcnemar"] += support_stats.mcnemar_exact(preds[0] == y_true, preds[1] == y_true).p_value < alpha
    swap_rate, mcnemar_rate = rejections["swap"] / simulations, rejections["mcnemar"] / simulations
    # Binomial(200, 0.05) has sd ~0.015: 0.10 is > 3 sd above the nominal level.
    assert swap_rate <= 0.10, swap_rate
    assert mcnemar_rate > 2 * alpha, mcnemar_rate


def test_swap_test_detects_a_real_difference():
    codes, y_true, _ = _clustered_outcomes(n_videos=60, frames=5, seed=3)
    rng = np.random.default_rng(4)
    good = np.where(rng.random(len(y_true)) < 0.9, y_true, (y_true + 1) % 3)
    weak = np.where(rng.random(len(y_true)) < 0.5, y_true, (y_true + 2) % 3)
    p = _swap_p(codes, y_true, good, weak, 3, permutations=500, seed=0)
    assert all(value < 0.01 for value in p.values()), p
    same = _swap_p(codes, y_true, good, good, 3, permutations=500, seed=0)
    assert all(value == 1.0 for value in same.values())


def test_corrected_resampled_t_matches_the_formula():
    d = np.array([0.02, 0.05, 0.01, 0.04, 0.03])
    t_value, p_value, df = clusterstats.corrected_resampled_t(d, test_train_ratio=0.25)
    expected_t = d.mean() / np.sqrt((1 / 5 + 0.25) * d.var(ddof=1))
    assert t_value == pytest.approx(expected_t) and df == 4
    assert p_value == pytest.approx(2 * student_t.sf(expected_t, 4))
    naive_t = d.mean() / np.sqrt(d.var(ddof=1) / 5)
    assert t_value < naive_t  # the correction widens the variance
    assert clusterstats.corrected_resampled_t(np.zeros(3), 0.5)[1] == 1.0
    with pytest.raises(UserError, match="at least 2"):
        clusterstats.corrected_resampled_t(np.array([0.1]), 0.5)


def _scored_fixture(n_videos: int, frames: int, seed: int):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_videos), frames)
    y_true = np.repeat(rng.integers(0, 3, n_videos), frames)
    logits = (
        rng.normal(size=(len(codes), 3))
        + 1.5 * np.eye(3)[y_true]
        + np.repeat(rng.normal(size=(n_videos, 3)), frames, 0)
    )
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return codes, y_true, probs


def test_macro_auc_matches_sklearn_and_its_influence_sums_to_zero():
    codes, y_true, probs = _scored_fixture(50, 4, seed=0)
    auc, influence = clusterstats.macro_auc_with_influence(y_true, probs, codes, 50)
    assert auc == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    assert influence.sum() == pytest.approx(0.0, abs=1e-12)
    tied = np.round(probs, 1)  # ties count half, as in sklearn
    assert clusterstats.macro_auc_with_influence(y_true, tied, codes, 50)[0] == pytest.approx(
        np.mean([roc_auc_score(y_true == c, tied[:, c]) for c in range(3)])
    )
    expected_pr = np.mean([average_precision_score(y_true == c, probs[:, c]) for c in range(3)])
    assert clusterstats.macro_pr_auc(y_true, probs) == pytest.approx(expected_pr)
    # One class only: no class has both positives and negatives, so neither AUC nor PR-AUC is defined
    # (average precision would be 1.0 for any scores, baselines included).
    one_class = np.zeros(len(y_true), dtype=np.int64)
    assert clusterstats.macro_auc_with_influence(one_class, probs, codes, 50)[0] is None
    assert clusterstats.macro_pr_auc(one_class, probs) is None


def test_first_order_auc_bootstrap_follows_the_exact_one():
    """AUC + w @ psi against the exact weighted AUC on the same video resamples."""
    codes, y_true, probs = _scored_fixture(120, 5, seed=1)
    auc, influence = clusterstats.macro_auc_with_influence(y_true, probs, codes, 120)
    weights = np.concatenate(list(clusterstats.group_weight_chunks(120, 150, seed=0)))
    linear = auc + weights @ influence
    exact = np.array(
        [np.mean([roc_auc_score(y_true == c, probs[:, c], sample_weight=w[codes]) for c in range(3)]) for w in weights]
    )
    assert np.corrcoef(linear, exact)[0, 1] > 0.98
    linear_ci = clusterstats.percentile_ci(linear, auc, 0.95)
    exact_ci = clusterstats.percentile_ci(exact, auc, 0.95)
    assert linear_ci == pytest.approx(exact_ci, abs=0.01)


def test_expected_calibration_error():
    y_true = np.array([0, 0, 1, 1])
    confident = np.array([[0.95, 0.05], [0.95, 0.05], [0.05, 0.95], [0.95, 0.05]])
    # Three images in the 0.95 bin with accuracy 2/3... all four sit in the top bin: |3/4 - 0.95| = 0.2.
    assert clusterstats.expected_calibration_error(y_true, confident) == pytest.approx(0.2)
    calibrated = np.array([[0.55, 0.45], [0.55, 0.45], [0.45, 0.55], [0.45, 0.55]])
    table = clusterstats.reliability_bins(y_true, calibrated)
    assert table["count"].sum() == 4 and len(table["edges"]) == clusterstats.ECE_BINS + 1
    assert clusterstats.expected_calibration_error(y_true, calibrated) == pytest.approx(0.45)
