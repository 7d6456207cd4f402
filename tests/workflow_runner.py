"""Run the real workflow with snakemake in a temporary copy of the repository, and read dry runs;
run one workflow script in-process as Snakemake's ``script:`` directive would."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# What a workflow run needs from the repository (results, logs and the demo data are generated).
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles", "envs"]
JOB_HEADER = re.compile(r"^(?:rule|checkpoint|localrule|localcheckpoint) (\w+):$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


# One machine-wide lock per name: `make test` runs two pytest workers (pytest-xdist), and apt-get
# (SLURM's packages, chromium) must not run twice at once.
MACHINE_LOCKS = Path("/tmp/quiltflow-tests-locks")


@contextlib.contextmanager
def machine_lock(name: str):
    """Hold an exclusive lock named ``name`` shared by every process of this machine."""
    MACHINE_LOCKS.mkdir(parents=True, exist_ok=True)
    with open(MACHINE_LOCKS / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    proc = subprocess.run(cmd, cwd=workdir, env=workflow_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
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


LOCAL_RULES = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    configs = ConfigSettings(configfiles=[Path(p) for p in sys.argv[1:]])
    workflow = api.workflow(ResourceSettings(cores=1), configs, snakefile=Path("Snakefile"))
    print("LOCAL", *sorted(workflow._workflow._localrules))
"""


def local_rules(workdir: Path, configs: tuple[str, ...]) -> list[str]:
    """The rules the workflow runs on the submitting host (its localrules), from Snakemake's API."""
    proc = subprocess.run(
        [sys.executable, "-c", LOCAL_RULES, *configs], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    lines = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("LOCAL")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return lines[0]


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


class _Named(dict):
    """Stand-in for Snakemake's named lists: attribute access and .get."""

    __getattr__ = dict.__getitem__


def run_workflow_script(
    script_name: str,
    *,
    input: Mapping[str, Any],  # noqa: A002  (Snakemake's own name)
    output: Mapping[str, Any],
    params: Mapping[str, Any],
    log: str | os.PathLike,
    threads: int = 1,
) -> None:
    """Run ``workflow/scripts/<script_name>`` in this process with a fake ``snakemake`` object.

    The scripts call ``quiltflow.core.smk.setup_logging``, which points sys.stdout/sys.stderr at the
    job log and replaces the "quiltflow" logger's handlers. Afterwards this puts back the streams,
    the handlers and the level, and closes the log file (so its text can be read at once)."""
    scripts = REPO / "workflow" / "scripts"
    snakemake_object = SimpleNamespace(
        scriptdir=str(scripts),
        input=_Named(input),
        output=_Named(output),
        params=_Named(params),
        log=[str(log)],
        threads=threads,
    )
    logger = logging.getLogger("quiltflow")
    saved_handlers, saved_level = list(logger.handlers), logger.level
    saved_stdout, saved_stderr = sys.stdout, sys.stderr
    try:
        runpy.run_path(str(scripts / script_name), init_globals={"snakemake": snakemake_object})
    finally:
        job_streams = {sys.stdout, sys.stderr} - {saved_stdout, saved_stderr}
        sys.stdout, sys.stderr = saved_stdout, saved_stderr
        for handler in set(logger.handlers) - set(saved_handlers):
            handler.close()
        logger.handlers[:] = saved_handlers
        logger.setLevel(saved_level)
        for stream in job_streams:
            stream.close()
