"""Pretraining as a stage (rule pretrain_encoder): config, the leakage rule, provenance, reruns."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from quiltflow.core.cv import run_buckets
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import sha256_file
from quiltflow.core.settings import ModelSettings, PretrainSettings
from quiltflow.dag.config import validate_config
from quiltflow.dag.pretraining import pool_buckets, pretrain_suffix, resolve_model_weights
from support import PRETRAIN_CONFIGS, PRETRAIN_MODELS, metrics_targets
from workflow_runner import clone_run, planned_jobs


def demo_config(**extra):
    return {"dataset": {}, "models": {"cnn": {"architecture": "custom_cnn"}}, **extra}


def with_ssl_model(weights="pretrained:simclr", architecture="resnet50_frozen", pretraining=None):
    config = demo_config(pretraining={"simclr": {}} if pretraining is None else pretraining)
    config["models"]["ssl"] = {"architecture": architecture, "weights": weights}
    return config


# --- config ------------------------------------------------------------------------------------


def test_pretraining_defaults_come_from_the_schema():
    config = validate_config(with_ssl_model())
    settings = PretrainSettings.from_config(config["pretraining"]["simclr"], "simclr", image_size=config["image_size"])
    assert (settings.method, settings.backbone, settings.pool) == ("simclr", "resnet50", "train")
    assert settings.image_size == config["image_size"] == 224  # null = the top-level size
    assert settings.batch_size >= 64 and 0 < settings.temperature < 1  # contrastive needs negatives


def test_unknown_pretraining_name_is_one_line_error():
    with pytest.raises(UserError) as err:
        validate_config(with_ssl_model(weights="pretrained:nope"))
    message = str(err.value)
    assert message.startswith("config key models.ssl.weights: pretrained:nope names no entry of pretraining")
    assert "\n" not in message and "simclr" in message


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"architecture": "custom_cnn", "weights": "pretrained:simclr"}, "trains from scratch"),
        ({"architecture": "resnet50_finetune", "weights": "pretrained:"}, "needs a name"),
    ],
)
def test_pretrained_weights_need_a_backbone_and_a_name(model, match):
    config = demo_config(pretraining={"simclr": {}})
    config["models"]["m"] = model
    with pytest.raises(UserError, match=match):
        validate_config(config)


def test_bad_pretraining_keys_name_the_key():
    with pytest.raises(UserError, match=r"^config key pretraining.simclr.temperature"):
        validate_config(with_ssl_model(pretraining={"simclr": {"temperature": 0}}))
    with pytest.raises(UserError, match=r"^config key pretraining.simclr.method"):
        validate_config(with_ssl_model(pretraining={"simclr": {"method": "byol"}}))


def test_a_model_resolves_to_its_jobs_backbone_file(tmp_path):
    info = {
        "name": "simclr",
        "method": "simclr",
        "backbone": "resnet50",
        "pool": "train",
        "pool_buckets": ["train"],
        "pool_images": 360,
        "epochs_run": 20,
        "weights_sha256": "ab",
    }
    (tmp_path / "info.json").write_text(json.dumps(info))
    settings = ModelSettings.from_config({"architecture": "resnet50_finetune", "weights": "pretrained:simclr"}, "ft")
    resolved, provenance = resolve_model_weights(
        settings, ["results/pretrained/simclr/backbone.weights.h5"], [str(tmp_path / "info.json")]
    )
    assert resolved.weights == "results/pretrained/simclr/backbone.weights.h5"
    assert provenance["description"] == "pretrained:simclr (simclr resnet50, 20 epochs on 360 train images)"
    plain = ModelSettings.from_config({"architecture": "resnet50_finetune", "weights": "none"}, "ft")
    assert resolve_model_weights(plain, []) == (plain, None)


# --- the leakage rule --------------------------------------------------------------------------


@pytest.mark.parametrize("folds", [1, 2, 3, 5])
def test_pool_never_holds_a_validation_or_test_bucket_of_its_runs(folds):
    for fold in range(folds):
        parts = run_buckets(fold, folds)
        pool = pool_buckets("train", fold, folds)
        assert pool == parts["train"] and pool
        assert not set(pool) & set(parts["val"] + parts["test"])
        assert pretrain_suffix(fold, folds) == ("" if folds == 1 else f"/fold{fold}")


def _ids(results, buckets, column):
    return set(pd.concat([pd.read_parquet(results / f"splits/{b}.parquet") for b in buckets])[column])


@pytest.mark.e2e
@pytest.mark.slow
def test_pretraining_by_fold_end_to_end(pretrain_run):
    """Two folds (the shared pretrain_run): one pretraining job per fold; its pool holds no image or
    video that a run using it validates or tests on; the frozen model's features come from its
    fold's backbone; the provenance reaches the metrics."""
    results = pretrain_run / "results"
    for fold in (0, 1):
        job = results / f"pretrained/simclr/fold{fold}"
        info = json.loads((job / "pretrain_info.json").read_text())
        parts = run_buckets(fold, 2)
        assert info["pool_buckets"] == parts["train"] and info["method"] == "simclr"
        held_out = parts["val"] + parts["test"]
        for column in ("image_id", "group"):  # no image, and no video, in both
            assert not _ids(results, info["pool_buckets"], column) & _ids(results, held_out, column)
        records = sum(
            json.loads((results / f"tfrecords/{b}.index.json").read_text())["num_records"] for b in parts["train"]
        )
        assert info["pool_images"] == records > 0
        assert info["weights_sha256"] == sha256_file(job / "backbone.weights.h5")
        train_info = json.loads((results / f"models/resnet50_ssl/fold{fold}-seed42/train_info.json").read_text())
        assert train_info["weights"].startswith(f"pretrained:simclr (simclr resnet50, 1 epochs on {records} train")
        assert train_info["pretraining"]["weights_sha256"] == info["weights_sha256"]
        assert sorted(
            p.name for p in (results / f"features/resnet50-pretrained-simclr/fold{fold}").glob("*.npz")
        ) == sorted(f"{b}.npz" for b in parts["train"] + parts["val"])
    metrics = json.loads((results / "metrics/resnet50_ssl.json").read_text())
    assert metrics["weights"].startswith("pretrained:simclr (simclr resnet50")


@pytest.mark.e2e
def test_a_pretraining_change_reruns_only_the_models_that_use_it(pretrain_run, tmp_path):
    """A pretraining key changed: that job (per fold) and the model using it rerun, nothing else."""
    workdir = clone_run(pretrain_run, tmp_path / "run")
    (workdir / "config/pretrain_test.yaml").write_text(
        (workdir / "config/pretrain_test.yaml")
        .read_text()
        .replace("batch_size: 8", "batch_size: 8\n    temperature: 0.5")
    )
    planned = planned_jobs(workdir, *metrics_targets(PRETRAIN_MODELS), configfiles=PRETRAIN_CONFIGS)
    assert {job.split("[")[0] for job in planned} == {
        "pretrain_encoder",
        "extract_features",
        "train_model",
        "evaluate_model",
        "pool_runs",
    }
    assert sum(job.startswith("pretrain_encoder") for job in planned) == 2
    assert not [job for job in planned if "custom_cnn" in job]


def test_methods_match_the_schema_and_model_jobs_do_not_hash_them():
    from pathlib import Path

    from quiltflow.core.settings import section_schema
    from quiltflow.dag.codehash import module_closure
    from quiltflow.models.encoders import METHODS

    assert list(METHODS) == section_schema("pretraining.*")["properties"]["method"]["enum"]
    scripts = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
    # Package-relative module names since the subpackages (quiltflow/models/simclr.py: models.simclr).
    assert "models.simclr" in module_closure(scripts / "pretrain_encoder.py")
    for script in ("train_model.py", "extract_features.py", "evaluate_model.py"):
        assert "models.simclr" not in module_closure(scripts / script)
