"""The config schema (workflow/schemas/config.schema.yaml): the one home of bounds and defaults."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from quiltflow.core.paths import CONFIG_SCHEMA

SCHEMA_PATH = CONFIG_SCHEMA


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def fill_defaults(schema: dict, value: Any) -> Any:
    """Fill schema defaults recursively (properties and additionalProperties of objects)."""
    if not isinstance(value, dict) or schema.get("type") not in ("object", None):
        return value
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = fill_defaults(sub, value[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in value:
            if key not in schema.get("properties", {}):
                value[key] = fill_defaults(extra, value[key])
    return value
