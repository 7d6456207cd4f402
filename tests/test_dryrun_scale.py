"""Dry-run scale: the DAG of a large Quilt-format configuration builds well within 15 s.

CI runs the 100k-row size (about a minute with the filter and split); the README's figure is the
1M-row run of `benchmarks/bench_dryrun.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_of_a_200_shard_quilt_dag_is_fast(tmp_path):
    out = tmp_path / "dryrun.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench_dryrun.py"), "--quick", "--json", str(out)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    result = json.loads(out.read_text())
    # one shard job per ~290 kept images, plus the per-split and per-model jobs
    assert result["planned_jobs"] > 150, result
    assert result["dry_run_seconds_median"] <= 15, result
