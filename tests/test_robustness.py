"""Bad input end to end, determinism from scratch, and surviving SIGKILL (training and sharding)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from bad_input_fixture import make_bad_input_dataset
from workflow_runner import REPO, VENV_BIN, clone_run, copy_workflow, snakemake, workflow_env

pytestmark = pytest.mark.e2e

SHARD_TARGETS = [f"results/tfrecords/{s}.index.json" for s in ("train", "val", "test")]
# The image CNN and the frozen backbone (features, then a head): resnet50_finetune's ~80 s add nothing.
DETERMINISM_MODELS = ("custom_cnn", "resnet50_frozen")


def bad_input_configs(workdir: Path, fixture: dict, **filters) -> tuple[str, ...]:
    overlay = {
        "dataset": {
            "format": "quilt",
            "metadata": str(fixture["lookup"]),
            "image_root": str(fixture["image_root"]),
            "demo": {"enabled": False},
        },
        "filters": {"min_per_class": 2, **filters},
        "tfrecords": {"images_per_shard": 16},
    }
    (workdir / "bad.yaml").write_text(yaml.safe_dump(overlay))
    return ("config/test.yaml", "bad.yaml")


def test_bad_input_end_to_end_counts_reconcile(tmp_path):
    fixture = make_bad_input_dataset(tmp_path / "data")
    workdir = copy_workflow(tmp_path / "run")
    snakemake(workdir, *SHARD_TARGETS, configfiles=bad_input_configs(workdir, fixture))
    results = workdir / "results"

    report = json.loads((results / "metadata/filter_report.json").read_text())
    assert report["rows_in"] == fixture["rows"]
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    # missing file, traversal, absolute path, malformed list, lonely class, not_histology, duplicates
    assert len([n for n in report["dropped"].values() if n > 0]) >= 6, report["dropped"]

    skipped: dict[str, str] = {}
    manifest_rows = 0
    for split in ("train", "val", "test"):
        manifest_rows += len(pd.read_parquet(results / f"splits/{split}.parquet"))
        for path in (results / "tfrecords" / split).glob("*.report.json"):
            shard = json.loads(path.read_text())
            assert shard["rows"] == shard["kept"] + len(shard["skipped"])
            skipped.update({s["image_id"]: s["reason"] for s in shard["skipped"]})
        index = json.loads((results / f"tfrecords/{split}.index.json").read_text())
        assert index["num_records"] + sum(index["skipped_by_reason"].values()) == len(
            pd.read_parquet(results / f"splits/{split}.parquet")
        )
    assert manifest_rows == report["images_kept"]
    # Every broken file is skipped with a reason; every odd-mode image is converted and kept.
    assert set(skipped) == set(fixture["bad_files"]), skipped
    assert all(reason for reason in skipped.values())
    assert len(set(skipped.values())) >= 3, skipped
    assert not set(fixture["converted"]) & set(skipped)


def test_filter_leaving_no_images_fails_with_one_line_naming_the_filter(tmp_path):
    fixture = make_bad_input_dataset(tmp_path / "data")
    workdir = copy_workflow(tmp_path / "run")
    configs = bad_input_configs(workdir, fixture, min_per_class=1000)
    proc = snakemake(workdir, "results/metadata/filtered.parquet", configfiles=configs, check=False)
    assert proc.returncode != 0
    log = (workdir / "logs/filter_metadata.log").read_text()
    assert "min_per_class" in log.strip().splitlines()[-1], log[-1500:]
    assert not (workdir / "results/metadata/filtered.parquet").exists()


@pytest.mark.slow
def test_two_runs_from_scratch_are_identical(finished_run, tmp_path):
    """A second run from scratch, up to what is compared (the data stages, every shard, and two
    models' metrics), gives the same bytes and metrics as finished_run."""
    workdir = copy_workflow(tmp_path / "again")
    snakemake(workdir, *SHARD_TARGETS, *(f"results/metrics/{m}.json" for m in DETERMINISM_MODELS))
    first, second = finished_run / "results", workdir / "results"
    files = [
        *(f"splits/{s}.parquet" for s in ("train", "val", "test")),
        "metadata/filtered.parquet",
        *(str(p.relative_to(first)) for p in sorted(first.glob("tfrecords/*/*.tfrecord"))),
    ]
    assert len(files) > 5
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    volatile = {"train_seconds", "eval_seconds", "wall_seconds", "timing", "created", "duration_seconds"}
    for model in DETERMINISM_MODELS:
        a = json.loads((first / f"metrics/{model}.json").read_text())
        b = json.loads((second / f"metrics/{model}.json").read_text())
        strip = lambda d: {k: v for k, v in d.items() if k not in volatile}  # noqa: E731
        assert strip(a) == strip(b), model


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode})")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_last_epoch(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    overlay = {"models": {"custom_cnn": {"architecture": "custom_cnn", "epochs": 5, "patience": 10}}}
    (workdir / "longer.yaml").write_text(yaml.safe_dump(overlay))
    cmd = [
        str(VENV_BIN / "snakemake"), "--cores", "2", "results/models/custom_cnn/model.keras",
        "--configfile", "config/test.yaml", "longer.yaml",
    ]  # fmt: skip
    log = workdir / "logs/train_model/custom_cnn.log"
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=workflow_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Epoch 3 starting means epochs 1-2 finished and were backed up.
        _wait_for(lambda: log.exists() and "Epoch 3/5" in log.read_text(), 300, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Snakemake was killed too: its lock stays (a user runs --unlock), and the job is recorded
    # as incomplete, so the profile's rerun-incomplete reruns it.
    snakemake(workdir, "--unlock", configfiles=("config/test.yaml", "longer.yaml"))
    snakemake(workdir, "results/models/custom_cnn/model.keras", configfiles=("config/test.yaml", "longer.yaml"))
    resumed_log = log.read_text()
    assert "Epoch 1/5" not in resumed_log and "Epoch 3/5" in resumed_log, resumed_log[-3000:]
    history = pd.read_csv(workdir / "results/models/custom_cnn/history.csv")
    assert list(history["epoch"]) == list(range(len(history))), history
    assert len(history) == 5
    info = json.loads((workdir / "results/models/custom_cnn/train_info.json").read_text())
    assert info["epochs_run"] == 5


def test_sigkilled_shard_writer_leaves_no_shard(tmp_path):
    """Kill a shard job mid-write: only the temporary file may exist, never the final name."""
    fixture = make_bad_input_dataset(tmp_path / "data")
    manifest = tmp_path / "manifest.parquet"
    names = sorted(p.name for p in fixture["image_root"].glob("*-good.jpg"))
    rows = [{"image_id": n, "label": "x", "group": n[:11], "label_index": 0} for n in names] * 200
    pd.DataFrame(rows).to_parquet(manifest)
    out = tmp_path / "shard" / "train-00000-of-00001.tfrecord"
    out.parent.mkdir()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from quiltflow.core.settings import ShardSettings; from quiltflow.data.shards import write_shard;"
        "settings = ShardSettings.from_config({'jpeg_quality': 90}, image_size=224);"
        "write_shard(sys.argv[2], sys.argv[3], 0, 1, settings, sys.argv[4], sys.argv[4] + '.report.json')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO / "workflow"), str(manifest), str(fixture["image_root"]), str(out)]
    )
    try:
        _wait_for(lambda: any(p.name != out.name for p in out.parent.iterdir()), 60, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    assert not Path(str(out) + ".report.json").exists()
