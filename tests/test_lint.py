"""The workflow passes `snakemake --lint`, is snakefmt and ruff clean, and its functions are short."""

from __future__ import annotations

import ast
import subprocess

from workflow_runner import REPO, VENV_BIN, workflow_env

MAX_FUNCTION_LINES = 60


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


def test_python_is_ruff_clean_and_formatted():
    ruff = str(VENV_BIN / "ruff")
    check = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stdout[-3000:] + fmt.stderr[-2000:]


def test_stage_functions_fit_on_a_screen():
    """No function of the stage package is longer than 60 lines (issue 13)."""
    too_long = []
    for path in sorted((REPO / "workflow" / "quiltflow").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, too_long
