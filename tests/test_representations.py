"""Frozen representations (quiltflow.dag.representations): one feature cache per base + weights,
shared by every model that trains on it; the DAG plans one extract_features job per bucket for it."""

from __future__ import annotations

import re

import pytest
import yaml
from quiltflow.core import paths
from quiltflow.core.paths import fill
from quiltflow.dag.representations import model_representation, representation_of, representations
from workflow_runner import copy_workflow, planned_jobs


@pytest.mark.parametrize(
    ("architecture", "weights", "name"),
    [
        ("resnet50_frozen", None, "resnet50-none"),
        ("resnet50_frozen", "random", "resnet50-none"),
        ("abmil", "none", "resnet50-none"),
        ("resnet50_frozen", "imagenet", "resnet50-imagenet"),
        ("meanmil", "ImageNet", "resnet50-imagenet"),
        ("resnet50_frozen", "pretrained:simclr", "resnet50-pretrained-simclr"),
        ("encoder_frozen", "encoder:lunit", "encoder-lunit"),
    ],
)
def test_representation_names_are_readable(architecture, weights, name):
    assert representation_of(architecture, weights).name == name


def test_a_weights_file_is_named_by_its_stem_and_its_paths_hash():
    one = representation_of("resnet50_frozen", "weights/my model.weights.h5")
    assert re.fullmatch(r"resnet50-my_model.weights-[0-9a-f]{8}", one.name)
    assert representation_of("abmil", "weights/my model.weights.h5") == one  # stable, shared
    assert representation_of("resnet50_frozen", "other/my model.weights.h5").name != one.name


def test_distinct_representations_get_distinct_names_and_one_extractor_each():
    reps = [
        representation_of(arch, weights)
        for arch, weights in [
            ("resnet50_frozen", "none"),
            ("resnet50_frozen", "imagenet"),
            ("resnet50_frozen", "pretrained:simclr"),
            ("resnet50_frozen", "pretrained:byol"),
            ("resnet50_frozen", "a/w.h5"),
            ("resnet50_frozen", "b/w.h5"),
            ("encoder_frozen", "encoder:lunit"),
            ("encoder_frozen", "encoder:uni"),
        ]
    ]
    assert len({rep.name for rep in reps}) == len(reps)
    assert all("/" not in rep.name for rep in reps)
    assert {rep.architecture for rep in reps} == {"resnet50_frozen", "encoder_frozen"}


def test_models_of_one_representation_share_one_cache():
    config = {
        "models": {
            "frozen": {"architecture": "resnet50_frozen", "weights": "none"},
            "abmil": {"architecture": "abmil", "weights": "none"},
            "meanmil": {"architecture": "meanmil", "weights": "imagenet"},
            "cnn": {"architecture": "custom_cnn", "weights": "none"},  # no cached features
        }
    }
    assert list(representations(config)) == ["resnet50-imagenet", "resnet50-none"]

    def cache(model):
        return fill(paths.FEATURES, representation=model_representation(config, model).name, pretrain_fold="")

    assert cache("frozen") == cache("abmil") == "results/features/resnet50-none/{split}.npz"
    assert cache("meanmil") != cache("abmil")


def _extractions(tmp_path, overlay):
    workdir = copy_workflow(tmp_path / "repo")
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    jobs = planned_jobs(workdir, configfiles=("config/test.yaml", "config/mil_test.yaml", "overlay.yaml"))
    return sorted(job for job in jobs if job.startswith("extract_features"))


@pytest.mark.e2e
def test_models_of_one_representation_plan_one_extraction_per_bucket(tmp_path):
    """config/mil_test.yaml: a frozen frame model and two bag models, all on random ResNet50
    weights (2 folds: 4 buckets), plus a second frozen model with the same weights."""
    second = {"architecture": "resnet50_frozen", "weights": "none", "learning_rate": 0.01}
    extractions = _extractions(tmp_path / "shared", {"models": {"frozen_b": second}})
    buckets = ("fold0a", "fold0b", "fold1a", "fold1b")
    assert extractions == [
        f"extract_features[representation=resnet50-none, pretrain_fold=, split={b}]" for b in buckets
    ]
    # Other weights for one bag model: a second representation, extracted once per bucket too.
    other = {"models": {"meanmil": {"architecture": "meanmil", "weights": "imagenet"}}}
    assert len(_extractions(tmp_path / "other", other)) == 8
