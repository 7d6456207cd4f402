"""Fixtures for the SLURM end-to-end tests: one throwaway cluster for the whole session."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_harness import SLURM_DIR, LocalSlurm, SlurmUnavailable, unavailable_reason  # noqa: E402

CLUSTER_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the throwaway single-node SLURM (root + apt)")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the cluster tests last: while /etc/slurm/slurm.conf exists, every snakemake start
    queries slurmctld, so no other test should run while the cluster is up or coming down."""

    def in_cluster_dir(item: pytest.Item) -> bool:
        return CLUSTER_DIR in Path(str(item.path)).resolve().parents

    items[:] = [i for i in items if not in_cluster_dir(i)] + [i for i in items if in_cluster_dir(i)]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A started `LocalSlurm`; skipped (reason printed) where the machine can't host one."""
    reason = unavailable_reason()
    if reason:
        print(f"SKIP slurm: {reason}")
        pytest.skip(reason)
    cluster = LocalSlurm()
    try:
        cluster.start()  # start() stops what it began if it fails
    except SlurmUnavailable as err:
        print(f"SKIP slurm: {err}")
        pytest.skip(str(err))
    try:
        yield cluster
    finally:
        cluster.stop()
        assert_no_leftovers()


def assert_no_leftovers() -> None:
    """After stop(): no config left, so snakemake's import-time `scontrol` query fails fast."""
    left = [p for p in (SLURM_DIR / "slurm.conf", SLURM_DIR / "gres.conf") if p.exists()]
    assert not left, f"harness left {left}"
    started = time.monotonic()
    subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30)
    took = time.monotonic() - started
    assert took < 3, f"`scontrol show config` takes {took:.1f} s after the cluster stopped"
