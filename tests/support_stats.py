"""Image-level statistics the tests compare the video-level comparison against, and the
McNemar test it replaced: the unit-of-analysis references of tests/test_stats.py and
tests/test_clusterstats.py (a support module, not a test module; the workflow never calls these).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from quiltflow.compare.stats import format_p, majority_class
from quiltflow.core.errors import UserError
from scipy.stats import binomtest

# Bootstrap resamples are processed in chunks so memory stays ~(chunk x n_test) whatever the settings.
_CHUNK_ELEMENTS = 4_000_000


def majority_predictions(y_true: np.ndarray, train_counts: Mapping[str, int], class_names: Sequence[str]) -> np.ndarray:
    """Always predict the train majority class."""
    return np.full(len(y_true), majority_class(train_counts, class_names), dtype=np.int64)


# --------------------------------------------------------------------------- vectorised metrics


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices [B, k, k] of B resamples (rows of ``idx``), via one bincount."""
    b = idx.shape[0]
    cell = y_true[idx] * k + y_pred[idx] + (np.arange(b) * k * k)[:, None]
    return np.bincount(cell.ravel(), minlength=b * k * k).reshape(b, k, k)


def macro_f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Macro F1 of confusion matrices [..., k, k], matching sklearn f1_score(average="macro", zero_division=0).

    As in scikit-learn (labels=None), only classes present in the true or predicted labels count.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    true_n = cm.sum(axis=-1)
    pred_n = cm.sum(axis=-2)
    denom = true_n + pred_n  # = 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    return f1.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    cm = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return float(macro_f1_from_confusion(cm.reshape(num_classes, num_classes)))


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile bootstrap intervals (``level`` e.g. 0.95) for accuracy and macro F1."""

    accuracy: float
    accuracy_ci: tuple[float, float]
    f1_macro: float
    f1_macro_ci: tuple[float, float]
    level: float
    samples: int

    def as_dict(self) -> dict:
        d = asdict(self)
        d["accuracy_ci"] = list(self.accuracy_ci)
        d["f1_macro_ci"] = list(self.f1_macro_ci)
        return d


def bootstrap_indices(n: int, samples: int, seed: int):
    """Yield chunks of resample indices [chunk, n] from one seeded generator.

    The same (n, samples, seed) always gives the same resamples, so every model (and every
    paired difference) is evaluated on identical bootstrap test sets.
    """
    if samples < 1:
        raise UserError(f"params bootstrap_samples: must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n))
    done = 0
    while done < samples:
        size = min(chunk, samples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def _percentile_ci(values: np.ndarray, estimate: float, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    # The percentile interval can miss the estimate on tiny or degenerate test sets; widening it to
    # include the estimate only ever makes the interval more conservative.
    return float(min(low, estimate)), float(max(high, estimate))


def bootstrap_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    *,
    samples: int,
    seed: int,
    level: float = 0.95,
) -> BootstrapResult:
    """Percentile bootstrap CIs for accuracy and macro F1, resampling test images with replacement."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        raise UserError("bootstrap: empty test set")
    correct = (y_true == y_pred).astype(np.float64)
    accs: list[np.ndarray] = []
    f1s: list[np.ndarray] = []
    for idx in bootstrap_indices(len(y_true), samples, seed):
        accs.append(correct[idx].mean(axis=1))
        f1s.append(macro_f1_from_confusion(_confusions(y_true, y_pred, idx, num_classes)))
    acc = accuracy(y_true, y_pred)
    f1 = macro_f1(y_true, y_pred, num_classes)
    return BootstrapResult(
        accuracy=acc,
        accuracy_ci=_percentile_ci(np.concatenate(accs), acc, level),
        f1_macro=f1,
        f1_macro_ci=_percentile_ci(np.concatenate(f1s), f1, level),
        level=level,
        samples=int(samples),
    )


def bootstrap_accuracy_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, *, samples: int, seed: int, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """Paired bootstrap CI of accuracy(A) - accuracy(B) over the same resampled test images."""
    diff = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    estimate = float(diff.mean())
    values = np.concatenate([diff[idx].mean(axis=1) for idx in bootstrap_indices(len(diff), samples, seed)])
    return estimate, _percentile_ci(values, estimate, level)


# --------------------------------------------------------------------------- McNemar


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of two classifiers on the same test images."""

    a: str
    b: str
    a_only_correct: int  # A right, B wrong
    b_only_correct: int  # A wrong, B right
    p_value: float

    @property
    def n_discordant(self) -> int:
        return self.a_only_correct + self.b_only_correct


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray, *, a: str = "A", b: str = "B") -> McNemarResult:
    """Exact (binomial) McNemar test on the discordant pairs; p = 1 when there are none."""
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise UserError(f"McNemar {a} vs {b}: {correct_a.size} vs {correct_b.size} test images")
    n_a = int(np.sum(correct_a & ~correct_b))
    n_b = int(np.sum(~correct_a & correct_b))
    p = 1.0 if n_a + n_b == 0 else float(binomtest(n_a, n_a + n_b, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(a=a, b=b, a_only_correct=n_a, b_only_correct=n_b, p_value=min(1.0, p))


def verdict(result: McNemarResult, alpha: float, *, p_adjusted: float | None = None) -> tuple[str | None, str]:
    """(winner or None, plain-words sentence) for one McNemar test at level ``alpha``.

    With several comparisons the decision uses the Holm-adjusted p-value, and the sentence shows both.
    """
    p_decide = result.p_value if p_adjusted is None else p_adjusted
    shown = f"p={format_p(result.p_value)}"
    if p_adjusted is not None and p_adjusted != result.p_value:
        shown += f", Holm-adjusted p={format_p(p_adjusted)}"
    if p_decide < alpha and result.a_only_correct != result.b_only_correct:
        winner, loser = (result.a, result.b) if result.a_only_correct > result.b_only_correct else (result.b, result.a)
        return winner, f"{winner} is significantly better than {loser} ({shown})"
    return None, f"no significant difference between {result.a} and {result.b} ({shown})"
