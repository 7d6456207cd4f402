"""Cross-validation by video: which buckets of images exist, and which runs train on which.

Every image lies in exactly one *bucket*; shards and cached features are made once per bucket,
whatever the number of folds and seeds. With ``splits.folds = 1`` the buckets are today's
``train``/``val``/``test``. With k >= 2 each fold's videos are split in two halves, ``fold{f}a``
and ``fold{f}b``: run (fold f, seed s) tests on both halves of fold f, validates on half ``a`` of
fold f+1 (mod k) and trains on everything else, so validation is grouped by video too. Standard
library only: the Snakefile plans the DAG with it.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLDOUT_BUCKETS = ("train", "val", "test")
FOLD_PARTS = ("a", "b")
# Frames without a label (``pretraining.<name>.pool: unlabeled``: quiltflow.data.unlabeled) lie in
# buckets of their own: ``unlabeled`` (their unit touches no labelled video) and one twin
# ``unlabeled-{bucket}`` per labelled bucket (their unit touches that bucket's videos only), so the
# leakage rule can choose them by bucket name, as it chooses labelled buckets.
UNLABELED = "unlabeled"


@dataclass(frozen=True)
class Run:
    """One training run: a fold and a seed. ``suffix`` is its path part ('' for a single run)."""

    fold: int
    seed: int
    suffix: str


def buckets(folds: int) -> list[str]:
    """Every bucket name, in a fixed order."""
    if folds == 1:
        return list(HOLDOUT_BUCKETS)
    return [f"fold{fold}{part}" for fold in range(folds) for part in FOLD_PARTS]


def unlabeled_bucket(bucket: str) -> str:
    """The bucket of unlabeled frames whose unit touches the videos of ``bucket`` only."""
    return f"{UNLABELED}-{bucket}"


def unlabeled_buckets(folds: int) -> list[str]:
    """Every bucket of unlabeled frames, in a fixed order."""
    return [UNLABELED] + [unlabeled_bucket(name) for name in buckets(folds)]


def runs(folds: int, seeds: list[int]) -> list[Run]:
    """Every (fold, seed) run. A single run keeps today's paths (empty suffix)."""
    if folds == 1 and len(seeds) == 1:
        return [Run(0, int(seeds[0]), "")]
    return [Run(fold, int(seed), f"/fold{fold}-seed{seed}") for fold in range(folds) for seed in seeds]


def run_buckets(fold: int, folds: int) -> dict[str, list[str]]:
    """{train, val, test: buckets} of a fold's run; the three sets partition every bucket."""
    if folds == 1:
        return {name: [name] for name in HOLDOUT_BUCKETS}
    test = [f"fold{fold}{part}" for part in FOLD_PARTS]
    val = [f"fold{(fold + 1) % folds}{FOLD_PARTS[0]}"]
    train = [name for name in buckets(folds) if name not in test + val]
    return {"train": train, "val": val, "test": test}


def run_of(suffix: str, folds: int, seeds: list[int]) -> Run:
    """The run whose path suffix is ``suffix`` (a Snakemake wildcard value)."""
    for run in runs(folds, seeds):
        if run.suffix == suffix:
            return run
    raise KeyError(f"no run {suffix!r} for {folds} folds and seeds {seeds}")
