"""Where things are: the workflow's own folders and the ``results/`` layout, in one place.

Rules (through ``workflow/rules/common.smk``) and Python callers ask here; no other module spells
these paths. Patterns use Snakemake's ``{wildcard}`` syntax and are filled with ``str.format``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # workflow/quiltflow
WORKFLOW_DIR = PACKAGE_DIR.parent  # workflow/
SCHEMAS_DIR = WORKFLOW_DIR / "schemas"
CONFIG_SCHEMA = SCHEMAS_DIR / "config.schema.yaml"
METRICS_SCHEMA = SCHEMAS_DIR / "metrics.schema.json"
