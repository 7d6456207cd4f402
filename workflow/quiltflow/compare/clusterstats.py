"""Statistics with the video (``group``) as the unit: cluster bootstrap, swap permutation test,
corrected resampled t-test, ranking and calibration metrics. NumPy/SciPy/scikit-learn only.

Frames of one video are correlated, so resampling or permuting images would treat near-copies as
independent evidence. Everything here works on per-group sufficient statistics: class counts per
group (true, correct, predicted), from which accuracy, balanced accuracy and macro F1 are ratios of
sums. A resample of groups is then a vector of group multiplicities ``w`` and the resampled sums are
``w @ counts``: one matrix product per chunk of resamples, no per-resample Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.stats import t as student_t
from sklearn.metrics import average_precision_score

from quiltflow.core.errors import UserError

# Resample matrices are built in chunks of about this many elements (float32: ~16 MB).
_CHUNK_ELEMENTS = 4_000_000
SCORE_NAMES = ("accuracy", "balanced_accuracy", "f1_macro")
# Fewest test videos (groups) for a cluster-bootstrap interval or design effect. A resample draws G
# videos with replacement, and "one video drawn G times" has probability G**-G for each video: 25 %
# at G=2 and 3.7 % at G=3 exceed the 2.5 % tail of a 95 % interval, whose bounds would then be
# single videos' scores, not a sampling spread (G=1: zero width, design effect 0); at G=4 it is
# 0.4 %. Below 30 videos the intervals are still wide, and a caveat says so.
MIN_GROUPS_FOR_INTERVALS = 4
ECE_BINS = 15


# --------------------------------------------------------------------------- per-group counts


def group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer code per image for its group (sorted group names), and the number of groups."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes.astype(np.int64), len(names)


def counts_per_group(codes: np.ndarray, labels: np.ndarray, n_groups: int, k: int) -> np.ndarray:
    """[G, k] number of images of each group with each label (one bincount)."""
    flat = np.bincount(codes * k + np.asarray(labels, dtype=np.int64), minlength=n_groups * k)
    return flat.reshape(n_groups, k)


def scores_from_counts(true_n: np.ndarray, correct_n: np.ndarray, pred_n: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 from per-class totals [..., k] (any leading axes).

    Balanced accuracy: mean recall over classes present in the true labels; macro F1: mean over
    classes present in the true or predicted labels, as scikit-learn defines them.
    """
    true_n, correct_n, pred_n = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (true_n, correct_n, pred_n))
    )
    total = true_n.sum(axis=-1)
    accuracy = np.divide(correct_n.sum(axis=-1), total, out=np.zeros_like(total), where=total > 0)
    present = true_n > 0
    recall = np.divide(correct_n, true_n, out=np.zeros_like(correct_n), where=present)
    balanced = recall.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)
    denom = true_n + pred_n
    f1 = np.divide(2 * correct_n, denom, out=np.zeros_like(correct_n), where=denom > 0)
    macro_f1 = f1.sum(axis=-1) / np.maximum((denom > 0).sum(axis=-1), 1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "f1_macro": macro_f1}


# --------------------------------------------------------------------------- resampling groups


def group_weight_chunks(n_groups: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield chunks [c, G] of cluster-bootstrap weights: how often each group is drawn when G groups
    are drawn with replacement (multinomial counts). Seeded: every caller with the same
    (n_groups, samples, seed) sees the same resamples, so models are compared on paired resamples."""
    if samples < 1:
        raise UserError(f"params bootstrap_samples: must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_groups))
    done = 0
    while done < samples:
        size = min(chunk, samples - done)
        drawn = rng.integers(0, n_groups, size=(size, n_groups))
        offsets = (np.arange(size) * n_groups)[:, None]
        counts = np.bincount((drawn + offsets).ravel(), minlength=size * n_groups)
        yield counts.reshape(size, n_groups).astype(np.float32)
        done += size


def swap_chunks(n_groups: int, permutations: int, seed: int) -> Iterator[np.ndarray]:
    """Yield chunks [c, G] of 0/1 indicators: which groups swap the two models' predictions."""
    if permutations < 1:
        raise UserError(f"params permutations: must be >= 1, got {permutations}")
    rng = np.random.default_rng([int(seed), 2])  # a stream of its own, independent of the bootstrap
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_groups))
    done = 0
    while done < permutations:
        size = min(chunk, permutations - done)
        yield (rng.random((size, n_groups)) < 0.5).astype(np.float32)
        done += size


def resampled_sums(per_group: np.ndarray, weight_chunks: Iterator[np.ndarray]) -> np.ndarray:
    """[B, C] sums of the per-group statistics [G, C] under each resample's group weights.

    float32 is exact here: the statistics are counts and every sum stays far below 2**24.
    """
    per_group = np.asarray(per_group, dtype=np.float32)
    return np.concatenate([weights @ per_group for weights in weight_chunks]).astype(np.float64)


def percentile_ci(values: np.ndarray, estimate: float, level: float) -> tuple[float, float]:
    """Percentile interval of resampled values, widened to contain the estimate (tiny or degenerate
    samples can miss it; widening only makes the interval more conservative)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float(estimate), float(estimate)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(min(low, estimate)), float(max(high, estimate))


def design_effect(resampled: np.ndarray, proportion: float, n_images: int) -> float | None:
    """Cluster-bootstrap variance of a proportion over its image-level (iid) variance p(1-p)/n,
    which is what an image bootstrap gives in expectation. None when p is 0 or 1 (no variance)."""
    iid_variance = proportion * (1.0 - proportion) / max(1, n_images)
    if iid_variance <= 0:
        return None
    return float(np.var(np.asarray(resampled, dtype=np.float64)) / iid_variance)


# --------------------------------------------------------------------------- tests


def swap_permutation_p(observed: np.ndarray, permuted: np.ndarray) -> np.ndarray:
    """Two-sided p-values (1 + #{|T*| >= |T|}) / (1 + P) of statistics [..] against [P, ..]."""
    tolerance = 1e-12 * np.maximum(1.0, np.abs(observed))  # ties of floating sums count as extreme
    extreme = (np.abs(permuted) >= np.abs(observed) - tolerance).sum(axis=0)
    return (1.0 + extreme) / (1.0 + permuted.shape[0])


def corrected_resampled_t(differences: np.ndarray, test_train_ratio: float) -> tuple[float, float, int]:
    """Nadeau & Bengio (2003) corrected resampled t-test on J per-fold/seed score differences.

    t = mean / sqrt((1/J + n_test/n_train) * s^2), df = J - 1; returns (t, two-sided p, df).
    """
    d = np.asarray(differences, dtype=np.float64)
    j = d.size
    if j < 2:
        raise UserError("corrected resampled t-test: needs at least 2 folds or seeds")
    mean = float(d.mean())
    variance = float(d.var(ddof=1))
    if variance <= 0:
        # Identical differences in every fold: no evidence of a difference only if they are all 0.
        return (0.0, 1.0, j - 1) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0, j - 1)
    t_value = mean / np.sqrt((1.0 / j + test_train_ratio) * variance)
    p_value = float(2 * student_t.sf(abs(t_value), df=j - 1))
    return float(t_value), min(1.0, p_value), j - 1


# --------------------------------------------------------------------------- ranking and calibration


def _ovr_placements(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-image Mann-Whitney placements of one class against the rest, and the AUC.

    A positive's placement counts negatives scored below it, a negative's counts positives above it
    (ties count half); AUC = sum of positive placements / (n_pos * n_neg).
    """
    pos_scores = np.sort(scores[positive])
    neg_scores = np.sort(scores[~positive])
    placements = np.empty(len(scores), dtype=np.float64)
    s = scores[positive]
    placements[positive] = np.searchsorted(neg_scores, s, "left") + 0.5 * (
        np.searchsorted(neg_scores, s, "right") - np.searchsorted(neg_scores, s, "left")
    )
    s = scores[~positive]
    above = len(pos_scores) - np.searchsorted(pos_scores, s, "right")
    placements[~positive] = above + 0.5 * (
        np.searchsorted(pos_scores, s, "right") - np.searchsorted(pos_scores, s, "left")
    )
    auc = placements[positive].sum() / (len(pos_scores) * len(neg_scores))
    return placements, float(auc)


def macro_auc_with_influence(
    y_true: np.ndarray, probs: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[float | None, np.ndarray]:
    """Macro one-vs-rest ROC-AUC, and each group's influence on it.

    The influence psi_g is the derivative of the AUC with respect to group g's weight (the clustered
    DeLong/Obuchowski structural components), so a resample with group weights w has
    AUC* ~= AUC + w @ psi (sum psi = 0). Classes without positives or negatives are left out.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    aucs, influences = [], []
    for c in range(probs.shape[1]):
        positive = y_true == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        placements, auc = _ovr_placements(np.asarray(probs[:, c], dtype=np.float64), positive)
        per_group = np.bincount(codes, weights=placements, minlength=n_groups) / (n_pos * n_neg)
        pos_per_group = np.bincount(codes, weights=positive.astype(float), minlength=n_groups)
        neg_per_group = np.bincount(codes, weights=(~positive).astype(float), minlength=n_groups)
        influences.append(per_group - auc * (pos_per_group / n_pos + neg_per_group / n_neg))
        aucs.append(auc)
    if not aucs:
        return None, np.zeros(n_groups)
    return float(np.mean(aucs)), np.mean(influences, axis=0)


def macro_pr_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest average precision (PR-AUC) over classes with both positives and negatives,
    as the macro AUC: a class carried by every image has AP 1.0 whatever the scores (None if none)."""
    y_true = np.asarray(y_true)
    defined = [c for c in range(probs.shape[1]) if 0 < np.count_nonzero(y_true == c) < len(y_true)]
    values = [average_precision_score(y_true == c, probs[:, c]) for c in defined]
    return float(np.mean(values)) if values else None


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: image count, mean confidence and accuracy of the top class."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return {"count": count, "confidence": mean_confidence, "accuracy": accuracy, "edges": np.linspace(0, 1, bins + 1)}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)| over ``bins`` equal-width confidence bins."""
    table = reliability_bins(y_true, probs, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float((table["count"][filled] * gaps).sum() / table["count"].sum())
