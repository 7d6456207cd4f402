"""Shared fixtures: one finished end-to-end run of config/test.yaml, copied by tests that change it."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_runner import copy_workflow, snakemake

SHARED_LC25000 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lc25000-lung-dev"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A copy of the workflow after a complete real run of config/test.yaml (about a minute)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("finished_run"))
    snakemake(workdir)
    return workdir


@pytest.fixture
def lc25000() -> Path:
    if not SHARED_LC25000.is_dir():
        pytest.skip(f"real tiles not available: {SHARED_LC25000} is absent (it ships only with CI)")
    return SHARED_LC25000
