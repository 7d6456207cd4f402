"""The Makefile's TensorFlow build choice: the CUDA build where `nvidia-smi -L` lists a GPU, the CPU
build elsewhere, GPU=0|1 overriding either way. Runs make on the lock only (nothing is installed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from workflow_runner import REPO

LOCK = REPO / "requirements.lock"
GPU_LOCK = REPO / "requirements-gpu.lock"


def _fake_nvidia_smi(bin_dir: Path, listing: str, code: int = 0) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\nexit {code}\n")
    tool.chmod(0o755)


def _requirements(tmp_path: Path, *make_args: str) -> tuple[str, str]:
    """Run `make venv -n` then write the build's requirements file; return (build, file text)."""
    venv = tmp_path / "venv"
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("GPU", None)
    common = ["make", "--no-print-directory", "-C", str(REPO), f"VENV={venv}", *make_args]
    plan = subprocess.run([*common, "-n", "venv"], env=env, capture_output=True, text=True, check=True).stdout
    build = "gpu" if "Installing the gpu build" in plan else "cpu"
    assert f"Installing the {build} build" in plan, plan
    target = venv / f"requirements.{build}.txt"
    subprocess.run([*common, str(target)], env=env, capture_output=True, text=True, check=True)
    return build, target.read_text()


def test_the_gpu_pins_are_the_cuda_libraries_only():
    pins = [line for line in GPU_LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert pins and all(line.startswith("nvidia-") and "==" in line for line in pins)


def _tensorflow_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lower().startswith("tensorflow")]


def _lock_version() -> str:
    (line,) = [line for line in LOCK.read_text().splitlines() if line.startswith("tensorflow_cpu==")]
    return line.split("==")[1]


@pytest.mark.parametrize(
    ("listing", "code", "args", "expected"),
    [
        ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n", 0, (), "gpu"),
        ("", 9, (), "cpu"),  # the driver is there but finds no GPU
        ("No devices were found\n", 6, (), "cpu"),
        ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n", 0, ("GPU=0",), "cpu"),
        ("", 9, ("GPU=1",), "gpu"),
    ],
)
def test_tensorflow_build_follows_the_gpu_and_the_override(tmp_path, listing, code, args, expected):
    _fake_nvidia_smi(tmp_path / "bin", listing, code)
    build, text = _requirements(tmp_path, *args)
    assert build == expected
    wanted = f"tensorflow[and-cuda]=={_lock_version()}" if expected == "gpu" else f"tensorflow_cpu=={_lock_version()}"
    assert _tensorflow_lines(text) == [wanted]
    # Everything else is the lock, line for line, plus the pinned CUDA libraries on the GPU build.
    others = [line for line in text.splitlines() if not line.lower().startswith("tensorflow")]
    expected_others = [line for line in LOCK.read_text().splitlines() if not line.lower().startswith("tensorflow")]
    if expected == "gpu":
        expected_others += GPU_LOCK.read_text().splitlines()
    assert others == expected_others


def test_no_nvidia_smi_at_all_is_the_cpu_build(tmp_path):
    (tmp_path / "bin").mkdir()
    env_path = f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), f"VENV={venv}", "-n", "venv"],
        env={"PATH": env_path, "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Installing the cpu build" in plan and "tensorflow[and-cuda]" not in plan
