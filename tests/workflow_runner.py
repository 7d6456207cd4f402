"""Run the real workflow with snakemake in a temporary copy of the repository, and read dry runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# What a workflow run needs from the repository (results, logs and the demo data are generated).
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles", "envs"]
JOB_HEADER = re.compile(r"^(?:rule|checkpoint|localrule|localcheckpoint) (\w+):$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def workflow_env() -> dict[str, str]:
    """Jobs call `python`: the test's own interpreter (the project venv) must come first."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow's files (not results) into dest; return dest."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def clone_run(src: Path, dest: Path) -> Path:
    """Copy a finished run (workflow, results, .snakemake metadata) keeping every mtime."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def snakemake(
    workdir: Path,
    *args: str,
    configfiles: tuple[str, ...] = ("config/test.yaml",),
    check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """Run `snakemake` in workdir (a workflow copy) with the test config; capture its output."""
    # Targets first: --resources and --configfile take every word that follows them.
    cmd = [str(VENV_BIN / "snakemake"), *args, "--cores", "2", "--resources", "gpu=1"]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    proc = subprocess.run(
        cmd, cwd=workdir, env=workflow_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(workdir: Path, *args: str, **kwargs) -> set[str]:
    """Jobs a dry run plans, as 'rule' or 'rule[wildcards]' strings."""
    proc = snakemake(workdir, "--dry-run", *args, **kwargs)
    jobs: set[str] = set()
    current: str | None = None
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        header = JOB_HEADER.match(line)
        if header:
            if current:
                jobs.add(current)
            current = header.group(1)
            continue
        wildcards = WILDCARDS.match(line)
        if wildcards and current and "[" not in current:
            current = f"{current}[{wildcards.group(1)}]"
    if current:
        jobs.add(current)
    return jobs


def rules_of(jobs: set[str]) -> set[str]:
    return {job.split("[", 1)[0] for job in jobs}


def run_without_tensorflow(code: str, timeout: int = 120) -> None:
    """Run ``code`` in a fresh interpreter with workflow/ on sys.path; fail if it raises or if
    TensorFlow or Keras got imported on the way (stages that need neither must not pay ~630 MB)."""
    script = (
        f"import sys\nsys.path.insert(0, {str(REPO / 'workflow')!r})\n{textwrap.dedent(code)}\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not leaked, leaked\nprint('OK')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK"), result.stdout[-2000:]
