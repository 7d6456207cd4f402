"""Typed settings, built once from the validated config.

The JSON schema (``workflow/schemas/config.schema.yaml``) is the only home of bounds and
defaults: ``section_values`` checks a config section (or a partial one, as a notebook or a unit
test passes it) against the schema's own sub-schema and fills its defaults, so a stage never
re-checks a bound of its own. Each stage's dataclass is built from those values.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import jsonschema

from quiltflow.config import fill_defaults, key_path, load_schema
from quiltflow.errors import UserError


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return load_schema()


def section_schema(section: str) -> dict:
    """The schema of one top-level config section; ``models.*`` is one model's entry."""
    properties = _schema()["properties"]
    if section == "models.*":
        return properties["models"]["additionalProperties"]
    if section not in properties:
        raise KeyError(f"no config section {section!r} in the schema")
    return properties[section]


def section_values(section: str, values: Mapping[str, Any] | None, where: str | None = None) -> dict:
    """Validate ``values`` against the schema of ``section``, fill its defaults, return a copy.

    ``where`` names the section in errors (default: ``section``), e.g. ``models.custom_cnn``.
    Raises UserError with one line such as ``config key filters.min_per_class: 0 is less than ...``.
    """
    schema = section_schema(section)
    values = copy.deepcopy(dict(values or {}))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: (len(e.absolute_path), key_path(e)))
    if errors:
        err = errors[0]
        inner = key_path(err)
        prefix = where or section
        key = prefix if inner == "<top level>" else f"{prefix}.{inner}"
        raise UserError(f"config key {key}: {err.message}")
    return fill_defaults(schema, values)


def schema_default(section: str, key: str) -> Any:
    """The schema's default of one key of a section (for documentation and tests)."""
    return copy.deepcopy(section_schema(section)["properties"][key]["default"])


def schema_bounds(section: str, key: str) -> tuple[Any, Any]:
    """(minimum, maximum) of a numeric key as the schema states them (None where unbounded)."""
    prop = section_schema(section)["properties"][key]
    return prop.get("minimum", prop.get("exclusiveMinimum")), prop.get(
        "maximum", prop.get("exclusiveMaximum")
    )


# --- data stages (filter_metadata, split_manifests, shards) -----------------------------------


# --- models (train_model, extract_features, evaluate_model) -----------------------------------
