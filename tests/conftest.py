"""Shared fixtures: the finished end-to-end runs of the suite, each made once per session.

Tests only read these runs. A test that runs snakemake on one, edits its files or writes results
first copies it with ``clone_run(run, tmp_path / "run")`` (the copy keeps every mtime, so the copy
plans nothing until the test changes something).

Each run's configs are the ``*_CONFIGS`` tuples of support.py: pass the same tuple to ``snakemake`` or
``planned_jobs`` on the run (or on a clone) so that a dry run sees the run's own config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import (
    CV_CONFIGS,
    CV_MODELS,
    FINISHED_CONFIGS,
    MULTILABEL_CONFIGS,
    PRETRAIN_CONFIGS,
    PRETRAIN_MODELS,
    metrics_targets,
)
from workflow_runner import clone_run, copy_workflow, snakemake

SHARED_LC25000 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lc25000-lung-dev"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A copy of the workflow after a complete real run of config/test.yaml (rule all).
    Serves test_workflow, test_codehash, test_predict, test_tta, test_robustness and test_data_safety
    (read, or cloned before a change)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("finished_run"))
    snakemake(workdir, configfiles=FINISHED_CONFIGS)
    return workdir


@pytest.fixture(scope="session")
def explained_run(finished_run, tmp_path_factory) -> Path:
    """A clone of finished_run after `snakemake explain` (the Grad-CAM galleries of its 3 models).
    Serves test_explain (the galleries) and test_report (cloned: `make report` writes into it)."""
    workdir = clone_run(finished_run, tmp_path_factory.mktemp("explained_run") / "run")
    snakemake(workdir, "explain", configfiles=FINISHED_CONFIGS)
    return workdir


@pytest.fixture(scope="session")
def cv_run(tmp_path_factory) -> Path:
    """config/test.yaml + config/cv_test.yaml (3 folds x 2 seeds), up to the pooled metrics of
    CV_MODELS. Serves test_cv."""
    workdir = copy_workflow(tmp_path_factory.mktemp("cv_run"))
    snakemake(workdir, *metrics_targets(CV_MODELS), configfiles=CV_CONFIGS)
    return workdir


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory) -> Path:
    """PRETRAIN_CONFIGS (2 folds, SimCLR per fold), up to the pooled metrics of PRETRAIN_MODELS.
    Serves test_pretrain (the pretraining-change dry run on a clone)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("pretrain_run"))
    snakemake(workdir, *metrics_targets(PRETRAIN_MODELS), configfiles=PRETRAIN_CONFIGS)
    return workdir


@pytest.fixture(scope="session")
def multilabel_cv_run(tmp_path_factory) -> Path:
    """MULTILABEL_CONFIGS: multi-label targets, 2-fold cross-validation by video, rule all.
    Serves test_multilabel (predict and explain run on a clone)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("multilabel"))
    snakemake(workdir, configfiles=MULTILABEL_CONFIGS)
    return workdir


@pytest.fixture
def lc25000() -> Path:
    if not SHARED_LC25000.is_dir():
        pytest.skip(f"real tiles not available: {SHARED_LC25000} is absent (it ships only with CI)")
    return SHARED_LC25000
