"""The workflow passes `snakemake --lint` and is snakefmt formatted."""

from __future__ import annotations

import subprocess

from workflow_runner import REPO, VENV_BIN, workflow_env


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [str(VENV_BIN / "snakemake"), "--lint"], cwd=REPO, env=workflow_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in output, output[-3000:]


def test_rules_are_snakefmt_formatted():
    proc = subprocess.run(
        [str(VENV_BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
