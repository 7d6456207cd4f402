"""Frozen representations measured as the field does: linear probe and weighted k-NN on cached
features, at label budgets of the training videos, for every (fold, seed) run. NumPy + scikit-learn.

No image is decoded: every fit reads the feature cache of rule extract_features. Budgets draw
*videos*, not images, so a 1 % budget cannot hold frames of a video beside its near-copies in test.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from quiltflow.core.errors import UserError

METHODS = ("linear", "knn")
DEFAULT_FRACTIONS = (0.01, 0.1, 0.5, 1.0)
DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# Similarity blocks of the k-NN hold about this many float32 entries (~64 MB), never n x n.
_BLOCK_ELEMENTS = 16_000_000


@dataclass(frozen=True)
class ProbeSettings:
    """The protocol: label fractions of the training videos, k-NN's k and temperature (DINO: 20,
    0.07), the logistic probe's C grid (ascending: warm starts go from strong to weak L2)."""

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    k: int = 20
    temperature: float = 0.07
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    max_iter: int = 200


@dataclass(frozen=True)
class Split:
    """Features [n, d], class indices [n], image ids and videos of some buckets, in one order."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    groups: np.ndarray

    def take(self, mask: np.ndarray) -> Split:
        return Split(self.features[mask], self.labels[mask], self.ids[mask], self.groups[mask])


@dataclass(frozen=True)
class Budget:
    """One label budget: the fraction and the training videos (sorted) and images it holds."""

    fraction: float
    videos: list[str]
    n_images: int


@dataclass
class ProbeResult:
    """Every fit's test predictions (one table) and each (fold, seed, fraction)'s budget."""

    predictions: pd.DataFrame
    budgets: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- budgets


def video_labels(groups: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Each video's most frequent label (ties: the smaller index): its stratum."""
    frame = pd.DataFrame({"group": np.asarray(groups).astype(str), "label": np.asarray(labels, dtype=np.int64)})
    counts = frame.groupby(["group", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["group", "n", "label"], ascending=[True, False, True])
    return dict(zip(counts.drop_duplicates("group")["group"], counts.drop_duplicates("group")["label"].astype(int)))


def label_budgets(groups: np.ndarray, labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[Budget]:
    """Nested, label-stratified budgets of videos: per class one seeded order of its videos, and
    each fraction takes the first ceil(fraction x n) (at least one) of every class. Prefixes of one
    order make smaller budgets subsets of larger ones, so a curve compares like with like."""
    strata = video_labels(groups, labels)
    rng = np.random.default_rng([int(seed), 26])  # a stream of its own (issue 26)
    orders = {}
    for label in sorted(set(strata.values())):
        videos = sorted(v for v, lab in strata.items() if lab == label)
        orders[label] = [videos[i] for i in rng.permutation(len(videos))]
    group_str = np.asarray(groups).astype(str)
    budgets = []
    for fraction in sorted(fractions):
        if not 0 < fraction <= 1:
            raise UserError(f"probe.label_fractions: {fraction} is not in (0, 1]")
        chosen = sorted(v for order in orders.values() for v in order[: max(1, math.ceil(fraction * len(order)))])
        budgets.append(Budget(float(fraction), chosen, int(np.isin(group_str, chosen).sum())))
    return budgets


# --------------------------------------------------------------------------- methods


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _votes(sims: np.ndarray, labels: np.ndarray, n_classes: int, k: int, temperature: float) -> np.ndarray:
    """Normalised weighted votes [rows, n_classes] of the k most similar columns of ``sims``."""
    rows, n = sims.shape
    k = min(k, n)
    # Partitioning for the k largest in place of sorting: O(n) per row, the k-NN's main cost.
    top = np.argpartition(sims, n - k, axis=1)[:, n - k :] if k < n else np.indices(sims.shape)[1]
    top_sims = np.take_along_axis(sims, top, axis=1).astype(np.float64)
    # Subtracting each row's maximum keeps exp() finite; normalising removes the factor again.
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / temperature)
    cells = (np.arange(rows)[:, None] * n_classes + labels[top]).ravel()
    votes = np.bincount(cells, weights=weights.ravel(), minlength=rows * n_classes).reshape(rows, n_classes)
    return votes / votes.sum(axis=1, keepdims=True)


def knn_subsets(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    n_classes: int,
    masks: Sequence[np.ndarray],
    *,
    k: int,
    temperature: float,
) -> list[np.ndarray]:
    """Weighted k-NN (Wu et al. 2018, DINO) of the queries against each training subset ``masks``:
    the k most cosine-similar training images vote for their label with weight exp(sim / T);
    votes normalised to sum 1. One [n_query, n_classes] array per mask.

    Queries go in blocks: one matrix product per block (memory a block x n_train, never n x n)
    serves every subset, so label budgets and seeds cost a top-k each, not a product each.
    """
    train, query = _unit_rows(train_x), _unit_rows(query_x)
    train_y = np.asarray(train_y, dtype=np.int64)
    columns = [np.flatnonzero(mask) for mask in masks]
    out = [np.zeros((len(query), n_classes)) for _ in masks]
    block = max(1, _BLOCK_ELEMENTS // max(1, len(train)))
    for start in range(0, len(query), block):
        sims = query[start : start + block] @ train.T
        for probs, cols in zip(out, columns):
            every = len(cols) == len(train)  # the full budget: no column copy
            subset = sims if every else sims[:, cols]
            probs[start : start + block] = _votes(subset, train_y[cols], n_classes, k, temperature)
    return out


def knn_probabilities(
    train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, n_classes: int, *, k: int, temperature: float
) -> np.ndarray:
    """Weighted k-NN of the queries against all of ``train_x`` (see :func:`knn_subsets`)."""
    every = np.ones(len(train_x), dtype=bool)
    return knn_subsets(train_x, train_y, query_x, n_classes, [every], k=k, temperature=temperature)[0]


def _expand(probs: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over the fitted classes placed in all n_classes columns (absent classes: 0)."""
    full = np.zeros((len(probs), n_classes))
    full[:, classes] = probs
    return full


def linear_probe(
    train: Split, val: Split, n_classes: int, settings: ProbeSettings
) -> tuple[StandardScaler, LogisticRegression, float]:
    """Multinomial logistic regression on standardised features, C chosen by validation balanced
    accuracy along the ascending grid (stopping once the score falls); each fit warm-starts from
    the previous (stronger-L2) one, which converges in a few iterations. The chosen fit is the train fit at that C (no refit
    needed: the grid fits are the train fits). Returns (scaler, model, C)."""
    scaler = StandardScaler().fit(train.features)
    model = LogisticRegression(max_iter=settings.max_iter, warm_start=True, tol=1e-3)
    grid = sorted(settings.c_grid)
    if not len(val.labels):
        # No validation image (a tiny fold): nothing to choose by; the grid's middle C, recorded.
        c = grid[len(grid) // 2]
        return scaler, model.set_params(C=c).fit(scaler.transform(train.features), train.labels), float(c)
    x_train, x_val = scaler.transform(train.features), scaler.transform(val.features)
    best, best_score, best_c = None, -np.inf, None
    for c in grid:
        model.set_params(C=c)
        model.fit(x_train, train.labels)
        score = balanced_accuracy_score(val.labels, model.predict(x_val))
        if score > best_score:  # ties keep the stronger regularisation
            best, best_score, best_c = copy.deepcopy(model), score, c
        elif score < best_score:
            # Past the peak: weaker L2 only overfits more, and those fits are the slowest ones.
            break
    return scaler, best, float(best_c)


def _linear_predict(train: Split, val: Split, test: Split, n_classes: int, settings: ProbeSettings):
    """(test probabilities [n_test, n_classes], chosen C or None) of the linear probe on ``train``."""
    if not len(test.labels):
        return np.zeros((0, n_classes)), None
    if len(np.unique(train.labels)) < 2:
        # One class in the budget: the probe can only say that class.
        return np.eye(n_classes)[np.full(len(test.labels), train.labels[0])], None
    scaler, model, c = linear_probe(train, val, n_classes, settings)
    return _expand(model.predict_proba(scaler.transform(test.features)), model.classes_, n_classes), c


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class RunData:
    """One (fold, seed) run's train, validation and test images."""

    fold: int
    seed: int
    train: Split
    val: Split
    test: Split


def probe_fold(runs: Sequence[RunData], n_classes: int, settings: ProbeSettings) -> tuple[list, list[dict]]:
    """Every (seed, fraction, method) fit of the runs of one fold (one train, validation and test
    set; seeds draw different budgets): test prediction frames and the budgets used.

    Both methods are deterministic given the training images, so a budget drawn twice (every
    seed's 100 %) is fitted once; k-NN scores every budget from one similarity pass."""
    base = runs[0]
    if not len(base.train.labels):
        raise UserError(f"probe: fold {base.fold} has no training images")
    video_of = base.train.groups.astype(str)
    planned, masks = [], {}
    for run in runs:
        for budget in label_budgets(run.train.groups, run.train.labels, settings.fractions, run.seed):
            key = tuple(budget.videos)
            masks.setdefault(key, np.isin(video_of, budget.videos))
            planned.append((run, budget, key))
    keys = list(masks)
    knn = knn_subsets(
        base.train.features,
        base.train.labels,
        base.test.features,
        n_classes,
        [masks[key] for key in keys],
        k=settings.k,
        temperature=settings.temperature,
    )
    fits = {
        key: (_linear_predict(base.train.take(masks[key]), base.val, base.test, n_classes, settings), votes)
        for key, votes in zip(keys, knn)
    }
    frames, budgets = [], []
    for run, budget, key in planned:
        (linear, c), votes = fits[key]
        frames += [
            _prediction_frame(run, budget.fraction, "linear", linear),
            _prediction_frame(run, budget.fraction, "knn", votes),
        ]
        budgets.append(
            {
                "fold": run.fold,
                "seed": run.seed,
                "fraction": budget.fraction,
                "n_videos": len(budget.videos),
                "n_images": budget.n_images,
                "videos": budget.videos,
                "c": {"linear": c},
            }
        )
    return frames, budgets


def _prediction_frame(run: RunData, fraction: float, method: str, probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": run.test.ids.astype(str),
            "group": run.test.groups.astype(str),
            "true_label": run.test.labels.astype(np.int32),
            "pred_label": probs.argmax(axis=1).astype(np.int32),
            "probabilities": list(probs.astype(np.float32)),
            "fold": np.int32(run.fold),
            "seed": np.int32(run.seed),
            "fraction": float(fraction),
            "method": method,
        }
    )


def run_protocol(runs: Sequence[RunData], n_classes: int, settings: ProbeSettings) -> ProbeResult:
    """Every run's fits, fold by fold; one table of test predictions (docs/interfaces.md)."""
    frames, budgets = [], []
    for fold in sorted({run.fold for run in runs}):
        of_fold = [run for run in runs if run.fold == fold]
        if any(
            not np.array_equal(r.train.ids, of_fold[0].train.ids) or not np.array_equal(r.test.ids, of_fold[0].test.ids)
            for r in of_fold
        ):
            raise UserError(f"probe: the runs of fold {fold} have different training or test images")
        fold_frames, fold_budgets = probe_fold(of_fold, n_classes, settings)
        frames += fold_frames
        budgets += fold_budgets
    return ProbeResult(pd.concat(frames, ignore_index=True), budgets)


def bucket_split(features: Mapping[str, dict], groups_of: Mapping[str, str], buckets: Sequence[str]) -> Split:
    """The images of ``buckets`` (feature caches by bucket name) with each image's video."""
    parts = [features[b] for b in buckets]
    labels = np.concatenate([np.asarray(p["labels"]) for p in parts])
    if labels.ndim != 1:
        raise UserError("probe: multi-label features are not supported yet (issue 26: multiclass first)")
    ids = np.concatenate([np.asarray(p["ids"]).astype(str) for p in parts])
    missing = [i for i in ids if i not in groups_of]
    if missing:
        raise UserError(f"probe: {len(missing)} feature ids not in the manifests, e.g. {missing[0]}")
    groups = np.array([groups_of[i] for i in ids], dtype=str)
    return Split(
        np.concatenate([p["features"] for p in parts]).astype(np.float32), labels.astype(np.int64), ids, groups
    )


def _read_caches(runs: Sequence[Mapping], image_size: int | None = None) -> dict[str, dict]:
    """Every feature cache the runs name, read once (several runs share a bucket's file)."""
    # Imported here: quiltflow.models imports TensorFlow, which the methods above never need.
    from quiltflow.models.features import load_features

    paths = sorted({p for run in runs for p in run["features"].values()})
    return {p: load_features(p, image_size=image_size) for p in paths}


def run_protocol_files(
    runs: Sequence[Mapping],
    manifest_paths: Sequence[str],
    label_map_path: str,
    settings: ProbeSettings,
    *,
    predictions_path: str,
    budgets_path: str,
) -> ProbeResult:
    """Rule probe_representation: ``runs`` as probe.smk gives them (fold, seed, buckets {train, val,
    test}, features {bucket: path}); writes the predictions Parquet and the budgets JSON."""
    from quiltflow.core.jsonio import read_label_map, write_json
    from quiltflow.core.tasks import MULTILABEL, read_task

    if read_task(label_map_path) == MULTILABEL:
        raise UserError("probe: multi-label runs are not supported yet (issue 26: multiclass first)")
    n_classes = len(read_label_map(label_map_path))
    manifests = pd.concat([pd.read_parquet(p, columns=["image_id", "group"]) for p in manifest_paths])
    groups_of = dict(zip(manifests["image_id"].astype(str), manifests["group"].astype(str)))
    caches = _read_caches(runs)
    data = []
    for run in runs:
        by_bucket = {bucket: caches[path] for bucket, path in run["features"].items()}
        parts = {name: bucket_split(by_bucket, groups_of, run["buckets"][name]) for name in ("train", "val", "test")}
        data.append(RunData(int(run["fold"]), int(run["seed"]), **parts))
    result = run_protocol(data, n_classes, settings)
    Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
    result.predictions.to_parquet(predictions_path, index=False)
    write_json({"settings": asdict(settings), "budgets": result.budgets}, budgets_path)
    return result
