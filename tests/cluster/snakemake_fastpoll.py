"""`snakemake` with the SLURM plugin's status-poll interval capped (test only).

The plugin waits `init-seconds-before-status-checks` after a job finishes and then 10 s
longer after every poll that saw nothing finish (up to 180 s), so a chain of ~10 s jobs
spends most of its time asleep, and shutdown after a failure waits out the last sleep.
Capping the interval changes only *when* it polls; submission, status parsing, retries and
error reporting are the plugin's own. Usage: python snakemake_fastpoll.py <snakemake args>
"""

import os
import sys

CAP_S = float(os.environ.get("QUILTFLOW_SLURM_POLL_CAP_S", "2"))


def cap_poll_interval() -> bool:
    """Clamp every interval the plugin sets; False (and unchanged) if its internals moved."""
    from snakemake_executor_plugin_slurm import Executor

    prop = getattr(Executor, "next_seconds_between_status_checks", None)
    if not isinstance(prop, property) or prop.fset is None:
        return False
    Executor.next_seconds_between_status_checks = property(
        prop.fget, lambda self, value: prop.fset(self, min(value, CAP_S))
    )
    return True


if __name__ == "__main__":
    if not cap_poll_interval():
        print("snakemake_fastpoll: plugin internals changed, polling at its own pace", file=sys.stderr)
    from snakemake.cli import main

    sys.argv[0] = "snakemake"
    sys.exit(main())
