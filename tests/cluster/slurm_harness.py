"""A throwaway single-node SLURM cluster (Debian packages) for end-to-end tests.

`LocalSlurm` writes `/etc/slurm/slurm.conf` + `gres.conf` (one node with a fake GPU),
starts munged, slurmctld and slurmd in the foreground as child processes, and on `stop()`
cancels every job, stops exactly those processes and removes what it wrote. The config
must live in /etc/slurm: the executor's job-step plugin strips every SLURM_* variable
(SLURM_CONF included) before its inner `srun`.

Leaving a `slurm.conf` behind without a controller would make every later `snakemake`
start stall ~10 s (the slurm plugin asks `scontrol` for settings at import), hence the
atexit guard, and the state file that lets a later run (or `python slurm_harness.py down`)
clean up after a run that was killed.

Usage by hand (as root):  python tests/cluster/slurm_harness.py up|down|status
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# tests/ holds workflow_runner (its machine-wide lock); this file also runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_runner import machine_lock  # noqa: E402

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
SLURM_DIR = Path("/etc/slurm")
MARKER = "# written by quiltflow tests/cluster/slurm_harness.py"
STATE_FILE = Path("/run/quiltflow-slurm-harness.json")
TMPDIR_PREFIX = "slurm-harness-"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
STOP_ORDER = ["slurmd", "slurmctld", "munged"]  # munged last: the others talk through it
FAKE_GPU_DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]


class SlurmUnavailable(RuntimeError):
    """This machine cannot host the test cluster; the message says why (used as skip reason)."""


class SlurmStartError(RuntimeError):
    """SLURM is installed but the daemons did not come up: a real failure, not a skip."""


def _run(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def unavailable_reason() -> str | None:
    """Why this machine can't run the cluster (None when it can, maybe after an install)."""
    if os.environ.get("QUILTFLOW_SKIP_SLURM", "") not in ("", "0"):
        return "QUILTFLOW_SKIP_SLURM is set"
    if platform.system() != "Linux":
        return "SLURM harness needs Linux"
    if os.geteuid() != 0:
        return "SLURM harness needs root (it installs packages and writes /etc/slurm)"
    have_bins = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not have_bins and not shutil.which("apt-get"):
        return "SLURM not installed and no apt-get to install it"
    conf = SLURM_DIR / "slurm.conf"
    if conf.exists() and MARKER not in conf.read_text(errors="replace"):
        return f"{conf} exists and was not written by this harness (a real cluster?); not touching it"
    return None


def install_packages(timeout: float = 240) -> None:
    """apt-get the four Debian packages unless their binaries are already there."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ]
    for cmd in steps:
        try:
            with machine_lock("apt-get"):  # the other pytest worker may be installing chromium
                res = _run(cmd, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"'{' '.join(cmd)}' took over {timeout:.0f} s (no network?)") from None
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
            raise SlurmUnavailable(f"'{' '.join(cmd)}' failed: {tail[0]}")


def _node_line(min_cpus: int, min_mem_mb: int, gpus: int) -> tuple[str, int, int]:
    """Node definition from `slurmd -C`, raised to the floor the profile's requests need."""
    out = _run(["slurmd", "-C"]).stdout.splitlines()[0]
    fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
    cpus = max(int(fields["CPUs"]), min_cpus)
    mem = max(int(fields["RealMemory"]), min_mem_mb)
    # Describe a flat topology so SLURM accepts the raised CPU count (config_overrides).
    line = (
        f"NodeName={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 "
        f"SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={mem} "
        f"Gres=gpu:{gpus} State=UNKNOWN"
    )
    return line, cpus, mem


def _alive(pid: int, name: str) -> bool:
    """True when `pid` is still a process whose command line mentions `name` (no PID reuse)."""
    try:
        return name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _stop_pid(pid: int, name: str, grace: float = 10) -> None:
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, name):
        time.sleep(0.1)
    if _alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def _is_harness_tmpdir(path: Path) -> bool:
    """Only a folder this harness made (tempfile.mkdtemp(prefix=...)) is ever removed."""
    return path.name.startswith(TMPDIR_PREFIX) and path.parent == Path(tempfile.gettempdir())


def cleanup_stale() -> list[str]:
    """Undo what a killed earlier run left (its recorded daemons and files). Returns actions."""
    done: list[str] = []
    if STATE_FILE.exists():
        try:
            state = json.loads(STATE_FILE.read_text())
        except ValueError:
            state = {}
        if shutil.which("scancel") and _alive(state.get("pids", {}).get("slurmctld", -1), "slurmctld"):
            _run(["scancel", "--full", "--user", "root"], timeout=10)
        pids = state.get("pids", {})
        for name in sorted(pids, key=lambda n: STOP_ORDER.index(n) if n in STOP_ORDER else -1):
            pid = pids[name]
            if _alive(pid, name):
                _stop_pid(pid, name)
                done.append(f"stopped {name} ({pid})")
        for path in state.get("files", []):
            p = Path(path)
            if p.is_file() and MARKER in p.read_text(errors="replace"):
                p.unlink()
                done.append(f"removed {p}")
        if state.get("tmpdir") and _is_harness_tmpdir(Path(state["tmpdir"])):
            shutil.rmtree(state["tmpdir"], ignore_errors=True)
        if state.get("created_munge_rundir"):
            shutil.rmtree(MUNGE_SOCKET.parent, ignore_errors=True)
        STATE_FILE.unlink(missing_ok=True)
    for name in ("slurm.conf", "gres.conf"):
        p = SLURM_DIR / name
        if p.is_file() and MARKER in p.read_text(errors="replace"):
            p.unlink()
            done.append(f"removed {p}")
    return done


@dataclass
class LocalSlurm:
    """One-node SLURM on 127.0.0.1 with `gpus` fake GPUs (spare character devices as gres).

    The node advertises at least `min_cpus`/`min_mem_mb` (SlurmdParameters=config_overrides)
    so that the profile's GPU-rule requests (8 CPUs, 32 GB, x2 on retry) are schedulable on
    a small CI runner, several at once (GPU jobs mostly wait on the plugin's polling);
    nothing enforces them (task/none), so this checks what jobs *ask for*.
    """

    gpus: int = 4  # at most len(FAKE_GPU_DEVICES)
    min_cpus: int = 32
    min_mem_mb: int = 262144
    start_timeout: float = 60
    tmpdir: Path | None = None  # state, spool and daemon logs; made by start()
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: list = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    created_munge_rundir: bool = False
    cpus: int = 0
    mem_mb: int = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> LocalSlurm:
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        cleanup_stale()
        install_packages()
        atexit.register(self.stop)  # also covers a test session that errors out
        self.tmpdir = Path(tempfile.mkdtemp(prefix=TMPDIR_PREFIX))
        try:
            self._write_config()
            self._start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c"])
            self._spawn("slurmd", ["slurmd", "-D"])
            self._wait_node_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons this object started, remove what it wrote."""
        atexit.unregister(self.stop)
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:  # every job on this cluster is ours; don't leave job steps running
                _run(["scancel", "--full", "--user", "root"], timeout=10)
                self._wait(lambda: not self.squeue_lines(states="RUNNING,PENDING,COMPLETING"), 15)
            except (OSError, subprocess.SubprocessError):
                pass  # stopping the daemons below matters more
        for name in STOP_ORDER:
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()
        if self.created_munge_rundir:
            shutil.rmtree(MUNGE_SOCKET.parent, ignore_errors=True)
            self.created_munge_rundir = False
        STATE_FILE.unlink(missing_ok=True)
        for handle in self.logs:
            handle.close()
        self.logs.clear()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- helpers
    def _save_state(self) -> None:
        STATE_FILE.write_text(
            json.dumps(
                {
                    "pids": {n: p.pid for n, p in self.procs.items()},
                    "files": [str(p) for p in self.written],
                    "tmpdir": str(self.tmpdir),
                    "created_munge_rundir": self.created_munge_rundir,
                }
            )
        )

    def _write_config(self) -> None:
        node, self.cpus, self.mem_mb = _node_line(self.min_cpus, self.min_mem_mb, self.gpus)
        t = self.tmpdir
        for sub in ("ctld", "spool"):
            (t / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        conf = f"""{MARKER}
ClusterName=quiltflow-ci
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={t}/ctld
SlurmdSpoolDir={t}/spool
SlurmctldPidFile={t}/slurmctld.pid
SlurmdPidFile={t}/slurmd.pid
SlurmctldLogFile={t}/slurmctld.log
SlurmdLogFile={t}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# squeue must still see finished jobs for the plugin's status checks (and our asserts).
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
{node}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        # SLURM wants one distinct character device per GPU (it sets CUDA_VISIBLE_DEVICES
        # from their order); jobs never open them.
        devices = "\n".join(f"Name=gpu File={d}" for d in FAKE_GPU_DEVICES[: self.gpus])
        gres = f"{MARKER}\nAutoDetect=off\n{devices}\n"
        SLURM_DIR.mkdir(exist_ok=True)
        for name, text in (("slurm.conf", conf), ("gres.conf", gres)):
            path = SLURM_DIR / name
            path.write_text(text)
            self.written.append(path)
        self._save_state()

    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        log = open(self.tmpdir / f"{name}.stdout", "w")
        self.logs.append(log)
        # own session: a Ctrl-C in the test terminal must not hit the daemons first
        self.procs[name] = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
        self._save_state()

    def _start_munge(self) -> None:
        if MUNGE_SOCKET.exists() and _run(["sh", "-c", "munge -n | unmunge"], 10).returncode == 0:
            return  # a munged is already serving; use it, and leave it alone at stop()
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            res = _run(["mungekey", "--create", f"--keyfile={key}"])
            if res.returncode != 0:
                raise SlurmUnavailable(f"cannot create {key}: {res.stderr.strip()}")
            shutil.chown(key, "munge", "munge")
            key.chmod(0o600)
        if not MUNGE_SOCKET.parent.exists():
            MUNGE_SOCKET.parent.mkdir(mode=0o755)
            self.created_munge_rundir = True
        shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
        self._spawn("munged", ["munged", "-F", "--force"], user="munge", group="munge")
        ok = self._wait(lambda: _run(["sh", "-c", "munge -n | unmunge"], 10).returncode == 0, 15)
        if not ok:
            raise SlurmStartError(f"munged did not start: {self.log_tail('munged.stdout')}")

    def _wait_node_idle(self) -> None:
        def idle() -> bool:
            for name in ("slurmctld", "slurmd"):
                if self.procs[name].poll() is not None:
                    raise SlurmStartError(f"{name} exited: {self.log_tail(name + '.log')}")
            res = _run(["sinfo", "-h", "-N", "-o", "%T"], 10)
            return res.returncode == 0 and res.stdout.strip() == "idle"

        if not self._wait(idle, self.start_timeout):
            raise SlurmStartError(
                f"node not idle after {self.start_timeout:.0f} s: "
                f"{_run(['sinfo', '-N', '-l']).stdout.strip()} {self.log_tail('slurmctld.log')}"
            )

    @staticmethod
    def _wait(pred, timeout: float, step: float = 0.3) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(step)
        return False

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = (self.tmpdir or Path("/nonexistent")) / name
        if not path.exists():
            return f"({name} missing)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ----------------------------------------------------------------- queries
    def squeue_lines(self, states: str = "all") -> list[str]:
        res = _run(["squeue", "-h", f"--states={states}", "-o", "%i|%T"], 10)
        return [ln for ln in res.stdout.splitlines() if ln.strip()]

    def jobs(self, workdir: Path | None = None) -> list[dict[str, str]]:
        """Jobs slurmctld still remembers (MinJobAge) as `scontrol show job -o` fields,
        oldest first; only those submitted from `workdir` when given."""
        res = _run(["scontrol", "show", "job", "-o"], 10)
        if "No jobs in the system" in res.stdout + res.stderr:
            return []
        out = []
        for line in res.stdout.splitlines():
            # values never contain spaces in our jobs, except Command=... (last-ish); fine here
            job = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
            if workdir is None or job.get("WorkDir") == str(workdir):
                out.append(job)
        return sorted(out, key=lambda j: int(j["JobId"]))

    def jobs_of_rule(self, rule: str, workdir: Path | None = None) -> list[dict[str, str]]:
        """Jobs the snakemake slurm plugin submitted for `rule` (it sets --comment rule_<name>...)."""
        return [
            j
            for j in self.jobs(workdir)
            if j.get("Comment") == f"rule_{rule}" or j.get("Comment", "").startswith(f"rule_{rule}_wildcards_")
        ]


def _main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    if cmd == "down":
        print("\n".join(cleanup_stale()) or "nothing to clean")
        return 0
    if cmd == "status":
        print(STATE_FILE.read_text() if STATE_FILE.exists() else "no harness cluster recorded")
        return 0
    if cmd == "up":
        cluster = LocalSlurm()
        cluster.start()
        atexit.unregister(cluster.stop)  # keep it running after this process exits
        print(
            f"up: {cluster.cpus} CPUs, {cluster.mem_mb} MB, gpu:{cluster.gpus}; logs in {cluster.tmpdir}; "
            f"stop with: python {argv[0]} down"
        )
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
