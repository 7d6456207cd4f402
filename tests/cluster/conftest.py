"""Fixtures for the SLURM end-to-end tests: one throwaway cluster for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_harness import LocalSlurm, SlurmUnavailable, unavailable_reason  # noqa: E402

CLUSTER_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the throwaway single-node SLURM (root + apt)")
    config.addinivalue_line("markers", "slow: takes more than ~20 s")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
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
