"""Helpers shared by the thin Snakemake scripts in ``workflow/scripts``."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_path: str | None) -> logging.Logger:
    """Send this job's log records (and stray prints) to its Snakemake log file."""
    logger = logging.getLogger("quiltflow")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    if log_path:
        stream = open(log_path, "w", buffering=1)
        # Keras progress lines and library warnings go to stdout/stderr: keep them in the log too.
        sys.stdout = stream
        sys.stderr = stream
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    return logger


def as_paths(value) -> list[str]:
    """A named input as a list: Snakemake gives a string for one file and a list-like for several."""
    return [value] if isinstance(value, str) else [str(v) for v in value]
