"""The workflow only ever reads a user's data: no rule writes outside the workflow's own folders.

Issue 12's reproduction: a Quilt-format dataset downloaded earlier, the workflow cloned today, a
run config naming only the dataset (layered over config/config.yaml). The demo generator used to
declare the user's lookup and image folder as its outputs, and the code trigger deleted them.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from quiltflow.core.errors import UserError
from quiltflow.dag.config import DEMO_DIR, OWNED_FOLDERS, validate_config
from quiltflow.data.demo import generate_demo
from workflow_runner import REPO, copy_workflow, planned_jobs, rules_of, snakemake

OLD_MTIME = 1_600_000_000  # 2020-09-13: the dataset predates the checkout, as a download would
OUTPUT_LINE = re.compile(r"^\s+(output|log): (.*)$")
JOB_HEADER = re.compile(r"^(?:rule|checkpoint|localrule|localcheckpoint) (\w+):$")


# --- the dataset a user brings ---------------------------------------------------------------


def make_user_dataset(root: Path) -> Path:
    """A small Quilt-format dataset (lookup + images + a file of the user's own), all old."""
    generate_demo(
        root / "quilt_1M_lookup.csv",
        root / "images",
        seed=7,
        images_per_class=30,
        tile_size=48,
        classes=["Breast", "Renal", "Pulmonary"],
    )
    (root / "images" / "NOTES.txt").write_text("the user's own file\n")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (OLD_MTIME, OLD_MTIME))
    return root


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder below root: SHA-256 (files) and mtime."""
    prints = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        prints[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return prints


def user_config(workdir: Path, data: Path, **dataset) -> str:
    """The minimal run config of the README's "Real data" section (plus optional extras)."""
    config = {
        "dataset": {
            "format": "quilt",
            "metadata": str(data / "quilt_1M_lookup.csv"),
            "image_root": str(data / "images"),
            **dataset,
        }
    }
    (workdir / "my.yaml").write_text(yaml.safe_dump(config))
    return "my.yaml"


# --- what the rules write --------------------------------------------------------------------


def planned_outputs(workdir: Path, *args: str, configfiles: tuple[str, ...]) -> dict[str, set[str]]:
    """{rule: output and log paths} of a dry run."""
    proc = snakemake(workdir, *args, "--dry-run", configfiles=configfiles)
    outputs: dict[str, set[str]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            rule = header.group(1)
            outputs.setdefault(rule, set())
            continue
        match = OUTPUT_LINE.match(line)
        if match and rule:
            outputs[rule].update(p.strip() for p in match.group(2).split(","))
    return outputs


def every_rule_output(workdir: Path, configfiles: tuple[str, ...]) -> dict[str, set[str]]:
    """Outputs of every job of a finished run's DAG, the shard jobs included.

    ``--forceall`` re-plans the plan_shards checkpoint, so its shard jobs are unknown there; a
    second dry run forces only the shard jobs (the plan exists) to list them too.
    """
    targets = ("all", "tfrecords", "train", "evaluate", "explain", "probe")
    outputs = planned_outputs(workdir, *targets, "--forceall", configfiles=configfiles)
    for rule, paths in planned_outputs(workdir, "--forcerun", "shard_tfrecords", configfiles=configfiles).items():
        outputs.setdefault(rule, set()).update(paths)
    for rule, paths in predict_outputs(workdir, configfiles).items():
        outputs.setdefault(rule, set()).update(paths)
    return outputs


def predict_outputs(workdir: Path, configfiles: tuple[str, ...]) -> dict[str, set[str]]:
    """Outputs of the `predict` target (not in the default DAG), with predict.images set to a
    folder outside the workflow and the config file beside it."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "images").mkdir()
        predict_yaml = Path(folder) / "predict.yaml"
        predict_yaml.write_text(yaml.safe_dump({"predict": {"images": str(Path(folder) / "images")}}))
        configs = (*configfiles, str(predict_yaml))
        return planned_outputs(workdir, "predict", "--forcerun", "predict_images", configfiles=configs)


def listed_rules(workdir: Path, configfiles: tuple[str, ...]) -> set[str]:
    proc = snakemake(workdir, "--list-rules", configfiles=configfiles)
    return {m.group(1) for m in (re.match(r"^(\w+)(?: \(|\s*$)", line) for line in proc.stdout.splitlines()) if m}


def assert_outputs_owned(workdir: Path, configfiles: tuple[str, ...], data: Path | None = None) -> None:
    outputs = every_rule_output(workdir, configfiles)
    assert set(outputs) == listed_rules(workdir, configfiles), "a rule is missing from the DAG check"
    assert "shard_tfrecords" in outputs and outputs["shard_tfrecords"]
    assert outputs.get("predict_images"), "the predict target planned no predict_images job"
    for rule, paths in outputs.items():
        for path in paths:
            assert not Path(path).is_absolute(), f"rule {rule} writes an absolute path {path}"
            assert any(path.startswith(folder + "/") for folder in OWNED_FOLDERS), (
                f"rule {rule} writes {path}, outside {OWNED_FOLDERS}"
            )
            if data is not None:
                assert str(data) not in os.path.abspath(workdir / path)


# --- tests -------------------------------------------------------------------------------------


def test_demo_run_outputs_stay_in_owned_folders(finished_run, tmp_path):
    # The pretraining arm puts rule pretrain_encoder into the DAG (the default config has none),
    # test-time augmentation rule evaluate_tta, a bag model evaluate_bag_model, compare_videos and
    # explain_attention (its config lies outside the shared run, which tests only read).
    bags = tmp_path / "bags.yaml"
    bags.write_text(yaml.safe_dump({"models": {"abmil": {"architecture": "abmil", "weights": "none"}}}))
    configs = ("config/test.yaml", "config/pretrain_test.yaml", "config/tta_test.yaml", str(bags))
    assert_outputs_owned(finished_run, configs)


def test_make_clean_removes_exactly_the_owned_folders():
    makefile = (REPO / "Makefile").read_text()
    clean = re.search(r"^clean:\n\trm -rf (.*)$", makefile, re.M)
    assert clean, "Makefile has no `clean: rm -rf ...` recipe"
    assert set(clean.group(1).split()) == set(OWNED_FOLDERS)


@pytest.mark.e2e
@pytest.mark.slow
def test_user_dataset_is_only_read(tmp_path):
    """The reproduction, fixed: the run uses the user's data, and every file of it is untouched.

    The real run goes up to one model's metrics: every stage that opens the user's files (hashing,
    the filter, the shards of every split) and one training and evaluation. The other models'
    jobs read only results/; every rule's outputs are checked below (assert_outputs_owned)."""
    data = make_user_dataset(tmp_path / "downloaded")
    before = fingerprint(data)
    workdir = copy_workflow(tmp_path / "clone")  # newer than the data: the code trigger's case
    configs = ("config/test.yaml", user_config(workdir, data))
    planned = rules_of(planned_jobs(workdir, configfiles=configs))
    assert "generate_demo_data" not in planned
    snakemake(workdir, "results/metrics/custom_cnn.json", configfiles=configs)
    assert fingerprint(data) == before
    assert not (workdir / DEMO_DIR).exists(), "the demo was generated in a real-data run"
    filtered = _kept_image_ids(workdir)
    assert filtered and filtered <= {p.name for p in (data / "images").iterdir()}
    assert_outputs_owned(workdir, configs, data)
    assert fingerprint(data) == before


@pytest.mark.e2e
def test_demo_enabled_with_user_data_stops_before_any_job(tmp_path):
    data = make_user_dataset(tmp_path / "downloaded")
    before = fingerprint(data)
    workdir = copy_workflow(tmp_path / "clone")
    configs = ("config/test.yaml", user_config(workdir, data, demo={"enabled": True}))
    proc = snakemake(workdir, configfiles=configs, check=False)
    assert proc.returncode != 0
    assert "config key dataset.demo.enabled: true, but dataset.image_root names your data" in proc.stderr
    assert "remove dataset.demo.enabled" in proc.stderr
    assert not (workdir / "results").exists() and not (workdir / DEMO_DIR).exists()
    assert fingerprint(data) == before


@pytest.mark.e2e
def test_minimal_config_over_the_default_one_reads_the_data(tmp_path):
    """Only the default config under the user's: the filter stage reads the user's lookup."""
    data = make_user_dataset(tmp_path / "downloaded")
    before = fingerprint(data)
    workdir = copy_workflow(tmp_path / "clone")
    configs = (user_config(workdir, data),)
    snakemake(workdir, "results/metadata/filtered.parquet", configfiles=configs)
    assert fingerprint(data) == before
    assert not (workdir / DEMO_DIR).exists()
    assert _kept_image_ids(workdir) <= {p.name for p in (data / "images").iterdir()}


def test_until_after_the_shard_checkpoint_says_what_to_run(tmp_path):
    workdir = copy_workflow(tmp_path / "clone")
    proc = snakemake(workdir, "--dry-run", "--until", "shard_tfrecords", check=False)
    assert proc.returncode != 0
    assert "--until shard_tfrecords: its jobs are only known after the plan_shards checkpoint" in (
        proc.stdout + proc.stderr
    )
    # Stages before the checkpoint still work with --until.
    ok = snakemake(workdir, "--dry-run", "--until", "split_manifests")
    assert "split_manifests" in ok.stdout


# --- config resolution (unit) ------------------------------------------------------------------


def _base(dataset: dict) -> dict:
    return {"dataset": dataset, "models": {"m": {"architecture": "custom_cnn"}}}


def test_no_dataset_paths_means_the_demo_under_its_own_folder():
    dataset = validate_config(_base({"format": "quilt"}))["dataset"]
    assert dataset["demo"]["enabled"] is True
    assert dataset["image_root"].startswith(DEMO_DIR + "/")
    assert dataset["metadata"].startswith(DEMO_DIR + "/")


def test_named_data_means_a_real_run(tmp_path):
    data = make_user_dataset(tmp_path / "d")
    dataset = validate_config(
        _base({"metadata": str(data / "quilt_1M_lookup.csv"), "image_root": str(data / "images")})
    )["dataset"]
    assert dataset["demo"]["enabled"] is False
    assert dataset["image_root"] == str(data / "images")


@pytest.mark.parametrize("key", ["image_root", "metadata"])
def test_demo_and_named_data_is_one_line_error(tmp_path, key):
    with pytest.raises(UserError, match=rf"^config key dataset.demo.enabled: true, but dataset.{key}") as err:
        validate_config(_base({key: str(tmp_path), "demo": {"enabled": True}}))
    assert "\n" not in str(err.value)


def test_demo_off_needs_an_image_root():
    with pytest.raises(UserError, match="^config key dataset.image_root: required when the demo is off"):
        validate_config(_base({"demo": {"enabled": False}}))


@pytest.mark.parametrize("owned", ["results/images", "resources/demo/images", "logs"])
def test_user_data_inside_an_owned_folder_is_refused(tmp_path, owned):
    (tmp_path / owned).mkdir(parents=True)
    with pytest.raises(UserError, match=r"^config key dataset.image_root: .* lies inside"):
        validate_config(_base({"format": "folder", "image_root": owned}), base_dir=tmp_path)


def _kept_image_ids(workdir: Path) -> set[str]:
    table = pd.read_parquet(workdir / "results/metadata/filtered.parquet")
    return {Path(p).name for p in table["image_id"]}
