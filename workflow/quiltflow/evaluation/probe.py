"""Frozen representations measured as the field does: linear probe and weighted k-NN on cached
features, at label budgets of the training videos, for every (fold, seed) run. NumPy + scikit-learn.

Multiclass runs: one multinomial probe and class votes. Multi-label runs (labels multi-hot [n, C]):
one-vs-rest logistic probes (one C for all labels, chosen by validation mAP) and per-label
similarity-weighted k-NN scores; decisions at 0.5.

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
from sklearn.metrics import average_precision_score, balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from quiltflow.core.errors import UserError
from quiltflow.core.settings import schema_default

METHODS = ("linear", "knn")
# The schema is the one home of the protocol's defaults (config key probe.*).
DEFAULT_FRACTIONS = tuple(schema_default("probe", "label_fractions"))
DEFAULT_C_GRID = tuple(schema_default("probe", "c_grid"))
MULTILABEL_THRESHOLD = 0.5  # a label is decided when its probe probability reaches this
# Similarity blocks of the k-NN hold about this many float32 entries (~64 MB), never n x n.
_BLOCK_ELEMENTS = 16_000_000


@dataclass(frozen=True)
class ProbeSettings:
    """The protocol: label fractions of the training videos, k-NN's k and temperature (DINO: 20,
    0.07), the logistic probe's C grid (ascending: warm starts go from strong to weak L2)."""

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    k: int = schema_default("probe", "k")
    temperature: float = schema_default("probe", "temperature")
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    max_iter: int = schema_default("probe", "max_iter")


@dataclass(frozen=True)
class Split:
    """Features [n, d], class indices [n] (multi-label: multi-hot [n, C]), image ids and videos of
    some buckets, in one order."""

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


def video_presence(groups: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(videos, sorted; [videos, labels] bool: the label is in some image of the video). Class
    indices [n] or multi-hot [n, C]."""
    videos, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    labels = np.asarray(labels, dtype=np.int64)
    hot = labels if labels.ndim == 2 else np.eye(int(labels.max(initial=0)) + 1, dtype=np.int64)[labels]
    counts = np.zeros((len(videos), hot.shape[1]), dtype=np.int64)
    np.add.at(counts, codes, hot)
    return videos, counts > 0


def video_strata(groups: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Each video's stratum. Multiclass: its most frequent label. Multi-label: its rarest label
    (carried by the fewest training videos; ties the smaller index), so a rare label's videos are
    drawn in proportion and not crowded out by common ones; -1 for a video without any label."""
    if np.asarray(labels).ndim == 1:
        return video_labels(groups, labels)
    videos, presence = video_presence(groups, labels)
    frequency = presence.sum(axis=0)
    rank = np.where(presence, frequency[None, :], np.iinfo(np.int64).max)  # argmin: rarest, then smaller index
    return {v: int(rank[i].argmin()) if presence[i].any() else -1 for i, v in enumerate(videos)}


def _cover_labels(chosen: set[str], order: Sequence[str], presence: Mapping[str, np.ndarray]) -> set[str]:
    """``chosen`` plus, for each label (ascending) that no chosen video carries, the first video of
    ``order`` carrying it: at least one positive video per label wherever the training set has one."""
    chosen = set(chosen)
    width = len(next(iter(presence.values())))
    covered = np.zeros(width, dtype=bool)
    for video in chosen:
        covered |= presence[video]
    for label in np.flatnonzero(~covered):
        carrier = next((v for v in order if presence[v][label]), None)
        if carrier is not None:
            chosen.add(carrier)
            covered |= presence[carrier]
    return chosen


def label_budgets(groups: np.ndarray, labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[Budget]:
    """Nested, label-stratified budgets of videos: per stratum (:func:`video_strata`) one seeded
    order of its videos, and each fraction takes the first ceil(fraction x n) (at least one) of every
    stratum, then a video for each label still without a positive one (:func:`_cover_labels`).
    Each budget extends the smaller one, so a curve compares like with like."""
    strata = video_strata(groups, labels)
    rng = np.random.default_rng([int(seed), 26])  # a stream of its own (issue 26)
    orders = {}
    for label in sorted(set(strata.values())):
        videos = sorted(v for v, lab in strata.items() if lab == label)
        orders[label] = [videos[i] for i in rng.permutation(len(videos))]
    videos, presence = video_presence(groups, labels)
    cover_order = [videos[i] for i in rng.permutation(len(videos))]
    presence_of = dict(zip(videos, presence))
    group_str = np.asarray(groups).astype(str)
    budgets, chosen = [], set()
    for fraction in sorted(fractions):
        if not 0 < fraction <= 1:
            raise UserError(f"probe.label_fractions: {fraction} is not in (0, 1]")
        chosen |= {v for order in orders.values() for v in order[: max(1, math.ceil(fraction * len(order)))]}
        chosen = _cover_labels(chosen, cover_order, presence_of)
        budgets.append(Budget(float(fraction), sorted(chosen), int(np.isin(group_str, sorted(chosen)).sum())))
    return budgets


# --------------------------------------------------------------------------- methods


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _votes(sims: np.ndarray, labels: np.ndarray, n_classes: int, k: int, temperature: float) -> np.ndarray:
    """Normalised weighted votes [rows, n_classes] of the k most similar columns of ``sims``.
    Multi-hot ``labels`` [n, C]: each label's score is the weighted share of neighbours carrying it."""
    rows, n = sims.shape
    k = min(k, n)
    # Partitioning for the k largest in place of sorting: O(n) per row, the k-NN's main cost.
    top = np.argpartition(sims, n - k, axis=1)[:, n - k :] if k < n else np.indices(sims.shape)[1]
    top_sims = np.take_along_axis(sims, top, axis=1).astype(np.float64)
    # Subtracting each row's maximum keeps exp() finite; normalising removes the factor again.
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / temperature)
    if labels.ndim == 2:
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("rk,rkc->rc", weights, labels[top].astype(np.float64))
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
    if train.labels.ndim == 2:
        return multilabel_linear_probe(train, val, test, settings)
    if len(np.unique(train.labels)) < 2:
        # One class in the budget: the probe can only say that class.
        return np.eye(n_classes)[np.full(len(test.labels), train.labels[0])], None
    scaler, model, c = linear_probe(train, val, n_classes, settings)
    return _expand(model.predict_proba(scaler.transform(test.features)), model.classes_, n_classes), c


def _fit_labels(models: Mapping[int, LogisticRegression], c: float, x_train, y_train, queries) -> list[np.ndarray]:
    """Fit every label's binary probe at C = ``c`` (warm-started from its previous fit) and return
    its positive-class probabilities on each of ``queries`` (one [n, labels] array each; labels
    without a probe keep their constant column, filled by the caller)."""
    out = [np.zeros((len(q), y_train.shape[1])) for q in queries]
    for label, model in models.items():
        model.set_params(C=c).fit(x_train, y_train[:, label])
        for probs, x in zip(out, queries):
            if len(x):
                probs[:, label] = model.predict_proba(x)[:, 1]
    return out


def _validation_score(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """(mAP, minus mean binary log-loss) over ``labels``: mAP ranks the fits; the log-loss breaks
    its ties (separable labels give mAP 1 at every C, and the strongest L2 then squeezes every
    probability towards the prevalence, so the 0.5 decisions would fail)."""
    y = y_true[:, labels].astype(np.float64)
    p = np.clip(probs[:, labels], 1e-7, 1 - 1e-7)
    ap = np.mean([average_precision_score(y[:, i], p[:, i]) for i in range(len(labels))])
    return float(ap), float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def multilabel_linear_probe(train: Split, val: Split, test: Split, settings: ProbeSettings):
    """One-vs-rest logistic probes on standardised features, one C for every label chosen by
    validation mAP (mean AP over labels with a validation positive; ties: the lower log-loss) along
    the ascending grid, warm-started and stopped once the score falls. A label all-positive or all-negative in the budget
    scores its budget prevalence (1 or 0). Returns (test probabilities [n_test, C], C)."""
    scaler = StandardScaler().fit(train.features)
    # scikit-learn refuses empty arrays: an empty validation set stays as it is (nothing is scored on it).
    x_train, x_val, x_test = (scaler.transform(s.features) if len(s.labels) else s.features for s in (train, val, test))
    y = np.asarray(train.labels, dtype=np.int64)
    prevalence = y.mean(axis=0)
    fitted = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    models = {j: LogisticRegression(max_iter=settings.max_iter, warm_start=True, tol=1e-3) for j in fitted}
    scored = [j for j in fitted if len(val.labels) and val.labels[:, j].any()]
    grid = sorted(settings.c_grid)
    if not scored:
        # Nothing to choose by (no validation positive of a fitted label): the grid's middle C.
        grid = [grid[len(grid) // 2]]
    best_probs, best_score, best_c = None, (-np.inf, -np.inf), None
    for c in grid:
        val_probs, test_probs = _fit_labels(models, c, x_train, y, [x_val, x_test])
        score = _validation_score(val.labels, val_probs, scored) if scored else (0.0, 0.0)
        if score > best_score:
            best_probs, best_score, best_c = test_probs, score, c
        elif score < best_score:
            break  # past the peak, as in linear_probe
    constant = [j for j in range(y.shape[1]) if j not in models]
    best_probs[:, constant] = prevalence[constant]
    return best_probs, float(best_c)


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
    """The columns of the workflow's predictions (quiltflow.records.predictions; multi-label: the
    first true label as ``true_label`` and the multi-hot columns, decisions at 0.5) and the fit's."""
    labels = run.test.labels
    multi = labels.ndim == 2
    hot_columns = {}
    if multi:
        hot_columns = {
            "true_multi_hot": list(labels.astype(np.int8)),
            "pred_multi_hot": list((probs >= MULTILABEL_THRESHOLD).astype(np.int8)),
        }
    return pd.DataFrame(
        {
            "image_id": run.test.ids.astype(str),
            "group": run.test.groups.astype(str),
            "true_label": (labels.argmax(axis=1) if multi else labels).astype(np.int32),
            "pred_label": probs.argmax(axis=1).astype(np.int32),
            "probabilities": list(probs.astype(np.float32)),
            **hot_columns,
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
    labels = np.concatenate([np.asarray(p["labels"]) for p in parts])  # [n] or multi-hot [n, C]
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

    multilabel = read_task(label_map_path) == MULTILABEL
    n_classes = len(read_label_map(label_map_path))
    manifests = pd.concat([pd.read_parquet(p, columns=["image_id", "group"]) for p in manifest_paths])
    groups_of = dict(zip(manifests["image_id"].astype(str), manifests["group"].astype(str)))
    caches = _read_caches(runs)
    data = []
    for run in runs:
        by_bucket = {bucket: caches[path] for bucket, path in run["features"].items()}
        parts = {name: bucket_split(by_bucket, groups_of, run["buckets"][name]) for name in ("train", "val", "test")}
        if multilabel != (parts["train"].labels.ndim == 2):
            first = run["features"][run["buckets"]["train"][0]]
            raise UserError(f"{first}: its labels do not fit the label map's task ({label_map_path})")
        data.append(RunData(int(run["fold"]), int(run["seed"]), **parts))
    result = run_protocol(data, n_classes, settings)
    Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
    result.predictions.to_parquet(predictions_path, index=False)
    write_json({"settings": asdict(settings), "budgets": result.budgets}, budgets_path)
    return result
