"""Shared fixtures: the finished end-to-end runs of the suite, each made once per session.

Tests only read these runs. A test that runs snakemake on one, edits its files or writes results
first copies it with ``clone_run(run, tmp_path / "run")`` (the copy keeps every mtime, so the copy
plans nothing until the test changes something).

Each run's configs are the ``*_CONFIGS`` tuples of support.py: pass the same tuple to ``snakemake`` or
``planned_jobs`` on the run (or on a clone) so that a dry run sees the run's own config.

`make test` runs two pytest workers (pytest-xdist, ``--dist loadfile``: a file's tests stay on one
worker). Each run is built once for the whole session, by the first worker that asks, under a file
lock in the workers' common temporary folder; the other worker waits for it, then reads it.
"""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable
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
from workflow_runner import clone_run, copy_workflow, machine_lock, snakemake

SHARED_LC25000 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lc25000-lung-dev"


def _session_root(tmp_path_factory) -> Path:
    """The folder all workers of this session share: under xdist each worker's base temp is
    <session>/popen-gwN."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_run(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """<session root>/<name>, built by ``build(folder)`` once per session across workers.

    A build that failed is not tried again by the other worker: it fails at once with the first
    worker's error, so a broken run costs its time once."""
    root = _session_root(tmp_path_factory)
    folder, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with machine_lock(f"{root.name}-{name}"):
        if failed.exists():
            pytest.fail(f"shared run {name} failed in the other worker:\n{failed.read_text()[-4000:]}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                build(folder)
            except BaseException:
                failed.write_text(traceback.format_exc())
                raise
            done.touch()
    return folder


def _run_all(dest: Path, configfiles: tuple[str, ...], targets: tuple[str, ...] | list[str] = ()) -> None:
    """A fresh copy of the workflow in dest, run to ``targets`` (rule all when none)."""
    snakemake(copy_workflow(dest), *targets, configfiles=configfiles)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A copy of the workflow after a complete real run of config/test.yaml (rule all).
    Serves test_workflow, test_codehash, test_predict, test_tta, test_robustness and test_data_safety
    (read, or cloned before a change)."""
    return shared_run(tmp_path_factory, "finished_run", lambda dest: _run_all(dest, FINISHED_CONFIGS))


@pytest.fixture(scope="session")
def explained_run(finished_run, tmp_path_factory) -> Path:
    """A clone of finished_run after `snakemake explain` (the Grad-CAM galleries of its 3 models).
    Serves test_explain (the galleries) and test_report (cloned: `make report` writes into it)."""

    def build(dest: Path) -> None:
        clone_run(finished_run, dest)
        snakemake(dest, "explain", configfiles=FINISHED_CONFIGS)

    return shared_run(tmp_path_factory, "explained_run", build)


@pytest.fixture(scope="session")
def cv_run(tmp_path_factory) -> Path:
    """config/test.yaml + config/cv_test.yaml (3 folds x 2 seeds), up to the pooled metrics of
    CV_MODELS. Serves test_cv."""
    return shared_run(tmp_path_factory, "cv_run", lambda dest: _run_all(dest, CV_CONFIGS, metrics_targets(CV_MODELS)))


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory) -> Path:
    """PRETRAIN_CONFIGS (2 folds, SimCLR per fold), up to the pooled metrics of PRETRAIN_MODELS.
    Serves test_pretrain (the pretraining-change dry run on a clone)."""
    targets = metrics_targets(PRETRAIN_MODELS)
    return shared_run(tmp_path_factory, "pretrain_run", lambda dest: _run_all(dest, PRETRAIN_CONFIGS, targets))


@pytest.fixture(scope="session")
def multilabel_cv_run(tmp_path_factory) -> Path:
    """MULTILABEL_CONFIGS: multi-label targets, 2-fold cross-validation by video, rule all.
    Serves test_multilabel (predict and explain run on a clone)."""
    return shared_run(tmp_path_factory, "multilabel", lambda dest: _run_all(dest, MULTILABEL_CONFIGS))


@pytest.fixture
def lc25000() -> Path:
    if not SHARED_LC25000.is_dir():
        pytest.skip(f"real tiles not available: {SHARED_LC25000} is absent (it ships only with CI)")
    return SHARED_LC25000
