"""Cross-validation by video: buckets, runs, fold assignment, pooling, and one end-to-end run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from quiltflow.core.cv import buckets, run_buckets, runs
from quiltflow.core.errors import UserError
from quiltflow.core.settings import SplitSettings
from quiltflow.data.splits import fold_assignment, make_splits
from quiltflow.evaluation.pooling import check_out_of_fold
from quiltflow.records.tfrecord_io import iter_records
from support import CV_CONFIGS, CV_MODELS, metrics_targets
from workflow_runner import clone_run, planned_jobs, rules_of


def filtered_table(n_videos=40, frames=3, classes=("A", "B", "C")):
    rows = []
    for v in range(n_videos):
        for f in range(frames):
            rows.append(
                {
                    "image_id": f"v{v:03d}_{f}.jpg",
                    "label": classes[v % len(classes)],
                    "group": f"video{v:03d}",
                    "pathologies": [classes[v % len(classes)]],
                    "labels": [classes[v % len(classes)]],
                    "subset": "quilt",
                    "source_split": "train",
                    "magnification": 1.0,
                    "n_captions": 1,
                }
            )
    return pd.DataFrame(rows)


def test_one_fold_keeps_the_holdout():
    assert buckets(1) == ["train", "val", "test"]
    assert [r.suffix for r in runs(1, [42])] == [""]
    assert run_buckets(0, 1) == {"train": ["train"], "val": ["val"], "test": ["test"]}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_run_buckets_partition_every_bucket(k):
    for fold in range(k):
        parts = run_buckets(fold, k)
        together = parts["train"] + parts["val"] + parts["test"]
        assert sorted(together) == sorted(buckets(k)) and len(together) == len(set(together))
        assert parts["test"] == [f"fold{fold}a", f"fold{fold}b"]
    tested = [b for fold in range(k) for b in run_buckets(fold, k)["test"]]
    assert sorted(tested) == sorted(buckets(k))  # each bucket is tested exactly once
    assert len(runs(k, [1, 2])) == 2 * k


def test_folds_are_grouped_stratified_and_seeded():
    settings = SplitSettings.from_config({"folds": 3}, seed=7)
    manifests, _, report = make_splits(filtered_table(), settings)
    assert sorted(manifests) == sorted(buckets(3))
    table = fold_assignment(manifests)
    assert table["image_id"].is_unique and len(table) == 120
    assert table.groupby("group")["fold"].nunique().max() == 1  # no video in two folds
    assert table.groupby("group")["bucket"].nunique().max() == 1
    per_fold = table.groupby(["fold", "label"]).size().unstack()
    assert per_fold.min().min() >= 9  # 40 videos x 3 frames, stratified: every class in every fold
    again, _, _ = make_splits(filtered_table(), settings)
    assert all(again[b].equals(manifests[b]) for b in manifests)
    other, _, _ = make_splits(filtered_table(), SplitSettings.from_config({"folds": 3}, seed=8))
    assert any(not other[b]["image_id"].equals(manifests[b]["image_id"]) for b in manifests)
    assert report["folds"] == 3 and sum(report["counts"].values()) == 120


def test_folds_and_source_val_do_not_mix():
    with pytest.raises(UserError, match="^config key splits.use_source_val"):
        SplitSettings.from_config({"folds": 3, "use_source_val": True}, seed=1)


def test_pooling_refuses_an_image_tested_twice_or_outside_its_fold():
    folds = pd.DataFrame({"image_id": ["a", "b"], "fold": [0, 1]})
    ok = pd.DataFrame({"image_id": ["a", "b", "a", "b"], "fold": [0, 1, 0, 1], "seed": [1, 1, 2, 2]})
    check_out_of_fold(ok, folds, [1, 2])
    with pytest.raises(UserError, match="tested twice"):
        check_out_of_fold(ok.assign(seed=1), folds, [1])
    with pytest.raises(UserError, match="outside its fold"):
        check_out_of_fold(ok.assign(fold=[1, 1, 0, 1]), folds, [1, 2])
    with pytest.raises(UserError, match="no predictions for seed 3"):
        check_out_of_fold(ok, folds, [1, 2, 3])


def _records(path):
    with open(path, "rb") as fh:
        return sum(1 for _ in iter_records(fh, verify=False))


@pytest.mark.e2e
@pytest.mark.slow
def test_three_folds_two_seeds_end_to_end(cv_run):
    """Every image tested once per seed, no video in two folds, no image encoded twice (the shared
    cv_run: config/cv_test.yaml, 3 folds x 2 seeds, the pooled metrics of CV_MODELS)."""
    folds_n, seeds = 3, (1, 2)
    results = cv_run / "results"
    folds = pd.read_parquet(results / "splits/folds.parquet")
    assert folds.groupby("group")["fold"].nunique().max() == 1
    filtered = pd.read_parquet(results / "metadata/filtered.parquet")
    assert sorted(folds["image_id"]) == sorted(filtered["image_id"])
    skipped, records = 0, 0
    for bucket in buckets(folds_n):
        index = json.loads((results / f"tfrecords/{bucket}.index.json").read_text())
        skipped += sum(index["skipped_by_reason"].values())
        records += sum(_records(results / "tfrecords" / s["path"]) for s in index["shards"])
    assert records + skipped == len(filtered)  # each image encoded exactly once
    assert len(list((results / "features/resnet50-none").glob("*.npz"))) == 6  # once per bucket
    fold_of = dict(zip(folds["image_id"], folds["fold"]))
    for model in CV_MODELS:
        predictions = pd.read_parquet(results / f"predictions/{model}.parquet")
        for seed in seeds:
            tested = predictions[predictions["seed"] == seed]
            assert tested["image_id"].is_unique and len(tested) == len(filtered) - skipped
            assert all(fold_of[i] == f for i, f in zip(tested["image_id"], tested["fold"]))
        metrics = json.loads((results / f"metrics/{model}.json").read_text())
        assert len(metrics["cv"]["runs"]) == 6 and metrics["metrics"]["n_test"] == len(predictions)


@pytest.mark.e2e
def test_a_third_seed_adds_only_training_and_evaluation(cv_run, tmp_path):
    """A third seed adds only training/evaluation jobs (and their pooling): no shard or feature job."""
    workdir = clone_run(cv_run, tmp_path / "run")
    (workdir / "seeds.yaml").write_text("seeds: [1, 2, 3]\n")
    configs = (*CV_CONFIGS, "seeds.yaml")
    planned = rules_of(planned_jobs(workdir, *metrics_targets(CV_MODELS), configfiles=configs))
    assert planned <= {"train_model", "evaluate_model", "pool_runs"}
    assert {"train_model", "evaluate_model", "pool_runs"} <= planned
