"""End to end: real snakemake runs of config/test.yaml, and exactly which jobs a change reruns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_runner import clone_run, copy_workflow, planned_jobs, rules_of, snakemake

pytestmark = pytest.mark.e2e

MODELS = ("custom_cnn", "resnet50_frozen", "resnet50_finetune")  # config/test.yaml


def write_overlay(workdir: Path, overlay: dict, name: str = "overlay.yaml") -> str:
    (workdir / name).write_text(yaml.safe_dump(overlay))
    return name


def overlay_configs(workdir: Path, overlay: dict) -> tuple[str, ...]:
    return ("config/test.yaml", write_overlay(workdir, overlay))


# --- the finished run --------------------------------------------------------------------------


def test_outputs_complete_and_reconciled(finished_run):
    results = finished_run / "results"
    report = json.loads((results / "metadata/filter_report.json").read_text())
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    assert report["dropped"], "the demo data must exercise the filters"
    filtered = pd.read_parquet(results / "metadata/filtered.parquet")
    assert len(filtered) == report["images_kept"]

    split_rows = 0
    for split in ("train", "val", "test"):
        manifest = pd.read_parquet(results / f"splits/{split}.parquet")
        split_rows += len(manifest)
        index = json.loads((results / f"tfrecords/{split}.index.json").read_text())
        shard_reports = sorted((results / "tfrecords" / split).glob("*.report.json"))
        assert len(shard_reports) == len(index["shards"])
        kept = skipped = 0
        for path in shard_reports:
            shard = json.loads(path.read_text())
            assert shard["rows"] == shard["kept"] + len(shard["skipped"])
            kept += shard["kept"]
            skipped += len(shard["skipped"])
        assert kept + skipped == len(manifest)
        assert index["num_records"] == kept
    assert split_rows == len(filtered)
    groups = [set(pd.read_parquet(results / f"splits/{s}.parquet")["group"]) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])

    for model in MODELS:
        metrics = json.loads((results / f"metrics/{model}.json").read_text())
        assert metrics["model"] == model
        assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
        history = pd.read_csv(results / f"models/{model}/history.csv")
        assert len(history) >= 1
    comparison = (results / "comparison.md").read_text()
    for name in (*MODELS, "majority"):
        assert name in comparison
    for plot in ("metrics.png", "training_curves.png", *(f"confusion_{m}.png" for m in MODELS)):
        assert (results / "plots" / plot).stat().st_size > 1000


def test_finished_run_plans_nothing(finished_run):
    assert planned_jobs(finished_run) == set()


# --- rerun granularity --------------------------------------------------------------------------


def test_hyperparameter_change_reruns_only_that_model(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    configs = overlay_configs(
        workdir, {"models": {"custom_cnn": {"architecture": "custom_cnn", "learning_rate": 0.0005}}}
    )
    jobs = planned_jobs(workdir, configfiles=configs)
    assert jobs == {
        "train_model[model=custom_cnn, run=]",
        "evaluate_model[model=custom_cnn, run=]",
        "compare_models",
        "all",
    }


def test_new_model_adds_only_its_jobs(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    configs = overlay_configs(workdir, {"models": {"small_cnn": {"architecture": "custom_cnn", "epochs": 1}}})
    jobs = planned_jobs(workdir, configfiles=configs)
    assert jobs == {
        "train_model[model=small_cnn, run=]",
        "evaluate_model[model=small_cnn, run=]",
        "compare_models",
        "all",
    }


def test_frozen_models_share_their_representations_features(finished_run, tmp_path):
    """Hyperparameters of a frozen model, or a second model on its representation (random
    weights, config/config.yaml): no extraction. Other weights for it: only the new
    representation's (resnet50-imagenet), after fetching the weights."""
    workdir = clone_run(finished_run, tmp_path / "run")
    tuned = {"architecture": "resnet50_frozen", "learning_rate": 0.0005, "batch_size": 8}
    jobs = planned_jobs(workdir, configfiles=overlay_configs(workdir, {"models": {"resnet50_frozen": tuned}}))
    assert rules_of(jobs) == {"train_model", "evaluate_model", "compare_models", "all"}
    second = {"frozen_b": {"architecture": "resnet50_frozen", "weights": "none", "epochs": 1}}
    jobs = planned_jobs(workdir, configfiles=overlay_configs(workdir, {"models": second}))
    assert jobs == {
        "train_model[model=frozen_b, run=]",
        "evaluate_model[model=frozen_b, run=]",
        "compare_models",
        "all",
    }
    imagenet = {"architecture": "resnet50_frozen", "weights": "imagenet"}
    jobs = planned_jobs(workdir, configfiles=overlay_configs(workdir, {"models": {"resnet50_frozen": imagenet}}))
    extractions = sorted(job for job in jobs if job.startswith("extract_features"))
    assert extractions and all("representation=resnet50-imagenet," in job for job in extractions)
    # ImageNet weights come from the local fetch job (never the Keras cache inside a compute job).
    fetched = {"fetch_imagenet_weights", "extract_features", "train_model", "evaluate_model", "compare_models"}
    assert rules_of(jobs) == fetched | {"all"}
    assert not [job for job in jobs if "custom_cnn" in job or "finetune" in job]


def test_image_size_change_reshards_but_keeps_metadata(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    jobs = planned_jobs(workdir, configfiles=overlay_configs(workdir, {"image_size": 40}))
    rules = rules_of(jobs)
    assert {"shard_tfrecords", "index_tfrecords", "extract_features", "train_model"} <= rules
    assert {"evaluate_model", "compare_models"} <= rules
    assert not rules & {"generate_demo_data", "filter_metadata", "split_manifests"}


def test_filter_change_with_identical_table_stops_at_the_filter(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    table = workdir / "results/metadata/filtered.parquet"
    before = table.read_bytes()
    # The test demo's classes have 16 or 3 images: min_per_class 4 -> 5 cannot change the table.
    configs = overlay_configs(workdir, {"filters": {"min_per_class": 5}})
    planned = rules_of(planned_jobs(workdir, configfiles=configs))
    assert "filter_metadata" in planned and "generate_demo_data" not in planned
    # Rerun just the filter; its output is content-stable, so Snakemake's checksum of the
    # (newer) table matches the one recorded by the split job, and nothing downstream reruns.
    snakemake(workdir, "results/metadata/filtered.parquet", configfiles=configs)
    assert table.read_bytes() == before
    assert planned_jobs(workdir, configfiles=configs) == set()


def test_touching_the_lookup_reruns_nothing(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    lookup = workdir / "resources/demo/quilt_1M_lookup.csv"
    later = time.time() + 5
    os.utime(lookup, (later, later))
    assert planned_jobs(workdir) == set()


def test_editing_stage_code_reruns_that_stage_and_dependants(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    with open(workdir / "workflow/quiltflow/data/splits.py", "a") as fh:
        fh.write("\n# an edit of the split logic\n")
    rules = rules_of(planned_jobs(workdir))
    assert {"split_manifests", "train_model", "evaluate_model", "compare_models"} <= rules
    assert not rules & {"generate_demo_data", "filter_metadata"}


def test_editing_the_comparison_script_reruns_only_the_comparison(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    with open(workdir / "workflow/scripts/compare_models.py", "a") as fh:
        fh.write("\n# an edit of the comparison script\n")
    assert planned_jobs(workdir) == {"compare_models", "all"}


# --- config errors stop before any job ---------------------------------------------------------


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"models": {"bad": {"architecture": "vgg16"}}}, "models.bad.architecture"),
        ({"models": {"custom_cnn": {"architecture": "custom_cnn", "epochs": "ten"}}}, "models.custom_cnn.epochs"),
        (
            {"dataset": {"metadata": "missing/lookup.csv", "image_root": "config"}},
            "dataset.metadata",
        ),
        ({"splits": {"fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}}, "splits.fractions"),
    ],
)
def test_bad_config_stops_with_one_line_naming_the_key(tmp_path, overlay, expected):
    workdir = copy_workflow(tmp_path / "run")
    proc = snakemake(workdir, "--dry-run", configfiles=overlay_configs(workdir, overlay), check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.startswith("config key ")]
    assert len(lines) == 1 and expected in lines[0], output[-2000:]
    assert not (workdir / "results").exists()


def test_report_html_bundles_every_plot(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")  # the report is written into results/
    snakemake(workdir, "--report", "results/report.html")
    html = (workdir / "results/report.html").read_text(errors="ignore")
    for name in (
        "comparison.md",
        "filter_report.json",
        "metrics.png",
        "training_curves.png",
        *(f"confusion_{m}.png" for m in MODELS),
    ):
        assert name in html, name
