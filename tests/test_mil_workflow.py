"""Bag models end to end (issue 27): abmil, meanmil and a frame model (resnet50_frozen) on the
test config with 2 folds by video (config/test.yaml + config/mil_test.yaml). All three train on
random-ResNet50 features: one shared cache (representation resnet50-none), extracted once per bucket."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from quiltflow.core import paths
from quiltflow.core.paths import fill
from quiltflow.records.attention import read_attention
from quiltflow.records.predictions import read_predictions
from workflow_runner import copy_workflow, run_workflow_script, snakemake

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIGS = ("config/test.yaml", "config/mil_test.yaml")
BAGS, FRAME = ("abmil", "meanmil"), "resnet50_frozen"
MODELS = (*BAGS, FRAME)


def _pooled(pattern: str, model: str) -> str:
    return fill(pattern, model=model, run="", variant="")


def _skipped(run) -> int:
    """Test images the shard stage could not read (the demo plants a few), over every bucket."""
    indexes = (run / "results" / "tfrecords").glob("*.index.json")
    return sum(sum(json.loads(p.read_text()).get("skipped_by_reason", {}).values()) for p in indexes)


@pytest.fixture(scope="module")
def mil_run(tmp_path_factory):
    dest = copy_workflow(tmp_path_factory.mktemp("mil") / "repo")
    targets = [_pooled(p, m) for m in MODELS for p in (paths.METRICS, paths.PREDICTIONS)]
    targets += [_pooled(paths.ATTENTION, m) for m in BAGS]
    snakemake(dest, *targets, configfiles=CONFIGS, timeout=1800)
    return dest


def test_bag_models_predict_each_test_video_once_per_seed_in_its_fold(mil_run):
    folds = pd.read_parquet(mil_run / paths.FOLDS_TABLE)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()  # no video in two folds
    assert (folds.groupby("group")["bucket"].nunique() == 1).all()  # nor in two buckets
    fold_of = folds.drop_duplicates("group").set_index("group")["fold"]
    for model in BAGS:
        predictions = read_predictions(mil_run / _pooled(paths.PREDICTIONS, model))
        assert set(predictions["group"]) == set(folds["group"])
        assert not predictions.duplicated(["group", "seed"]).any()
        assert (predictions["fold"].to_numpy() == fold_of[predictions["group"]].to_numpy()).all()
        # The frames a video's prediction saw: those sharded (the demo's broken images are skipped).
        frames = read_attention(mil_run / _pooled(paths.ATTENTION, model)).groupby("group").size()
        assert (predictions["n_frames"].to_numpy() == frames[predictions["group"]].to_numpy()).all()
        assert predictions["n_frames"].sum() == len(folds) - _skipped(mil_run)
        document = json.loads((mil_run / _pooled(paths.METRICS, model)).read_text())
        assert document["unit"] == "video" and document["metrics"]["n_test"] == len(predictions)
        assert document["cv"]["folds"] == 2 and len(document["cv"]["runs"]) == 2
        info = json.loads((mil_run / fill(paths.TRAIN_INFO, model=model, run="/fold0-seed42")).read_text())
        assert info["unit"] == "video" and info["settings"]["max_frames"] == 8
    frame_doc = json.loads((mil_run / _pooled(paths.METRICS, FRAME)).read_text())
    assert frame_doc["unit"] == "image"


def test_frame_and_bag_models_share_one_feature_cache(mil_run):
    caches = sorted(p.relative_to(mil_run / "results/features") for p in (mil_run / "results/features").rglob("*.npz"))
    assert [str(p) for p in caches] == [f"resnet50-none/{b}.npz" for b in ("fold0a", "fold0b", "fold1a", "fold1b")]


def test_attention_covers_every_test_frame_and_sums_to_one_per_video(mil_run):
    folds = pd.read_parquet(mil_run / paths.FOLDS_TABLE)
    for model in BAGS:
        attention = read_attention(mil_run / _pooled(paths.ATTENTION, model))  # checks the sums
        assert set(attention["image_id"]) <= set(folds["image_id"]) and attention["image_id"].is_unique
        assert len(attention) == len(folds) - _skipped(mil_run)
        assert (attention.groupby(["group", "fold", "seed"])["attention"].sum() - 1).abs().max() < 1e-3
    uniform = read_attention(mil_run / _pooled(paths.ATTENTION, "meanmil"))
    sizes = uniform.groupby("group")["attention"].transform("size")
    assert ((uniform["attention"] - 1 / sizes).abs() < 1e-5).all()  # the control's weights are uniform


def test_frame_and_bag_models_are_compared_at_the_video(mil_run, tmp_path):
    out = {ext: str(tmp_path / f"comparison_video.{ext}") for ext in ("json", "csv", "md")}
    run_workflow_script(
        "compare_videos.py",
        input={
            "metrics": [str(mil_run / _pooled(paths.METRICS, m)) for m in MODELS],
            "predictions": [str(mil_run / _pooled(paths.PREDICTIONS, m)) for m in MODELS],
            "split_report": str(mil_run / paths.SPLIT_REPORT),
            "label_map": str(mil_run / paths.LABEL_MAP),
        },
        output=out,
        params={"seed": 1, "bootstrap_samples": 200, "permutations": 200, "alpha": 0.05, "narration_labels": False},
        log=tmp_path / "compare_videos.log",
    )
    document = json.loads(open(out["json"]).read())
    units = {row["name"]: row["unit"] for row in document["rows"] if row["unit"]}
    assert units == {"abmil": "video", "meanmil": "video", FRAME: "image"}
    folds = pd.read_parquet(mil_run / paths.FOLDS_TABLE)
    assert document["n_test"] == folds["group"].nunique()
    pairs = {frozenset((t["a"], t["b"])) for t in document["pairwise"]}
    assert {frozenset(("abmil", "meanmil")), frozenset(("abmil", FRAME))} <= pairs
