"""Config validation: JSON schema (workflow/schemas/config.schema.yaml) plus checks a schema cannot express.

Every failure is one line naming the key or path, raised before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from quiltflow.errors import UserError

# Backbone weights when a model sets none (schema null): the study trained the CNN from scratch
# and used ImageNet ResNet50s.
DEFAULT_WEIGHTS = {"custom_cnn": "none", "resnet50_frozen": "imagenet", "resnet50_finetune": "imagenet"}

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = PACKAGE_DIR.parent / "schemas" / "config.schema.yaml"


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


def validate_config(config: dict, schema: dict | None = None, base_dir: Path | str = ".") -> dict:
    """Return a validated copy of ``config`` with every default filled in.

    Raises UserError with one line such as
    ``config key models.custom_cnn.epochs: 'ten' is not of type 'integer'``.
    """
    schema = schema or load_schema()
    config = copy.deepcopy(config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), key_path(e)))
    if errors:
        err = errors[0]
        raise UserError(f"config key {key_path(err)}: {err.message}")
    config = fill_defaults(schema, config)
    _check_semantics(config, Path(base_dir))
    return config


def _check_semantics(config: dict, base_dir: Path) -> None:
    fractions = config["splits"]["fractions"]
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"config key splits.fractions: train+val+test must sum to 1, got {total:g}")
    dataset = config["dataset"]
    demo = dataset["demo"]["enabled"]
    if dataset["format"] in ("quilt", "csv"):
        if not dataset.get("metadata"):
            raise UserError(f"config key dataset.metadata: required for format {dataset['format']}")
        if not demo and not (base_dir / dataset["metadata"]).is_file():
            raise UserError(f"config key dataset.metadata: file not found: {dataset['metadata']}")
    if demo and dataset["format"] != "quilt":
        raise UserError("config key dataset.demo.enabled: the demo generates Quilt-format data; set dataset.format: quilt")
    if not demo and not (base_dir / dataset["image_root"]).is_dir():
        raise UserError(f"config key dataset.image_root: folder not found: {dataset['image_root']}")
    for name, model in config["models"].items():
        if model["weights"] is None:  # the schema's null: this architecture's default
            model["weights"] = DEFAULT_WEIGHTS[model["architecture"]]
        weights = model["weights"]
        if model["architecture"] == "custom_cnn" and weights not in ("none",):
            raise UserError(f"config key models.{name}.weights: custom_cnn trains from scratch; use none")
        if weights not in ("imagenet", "none") and not (base_dir / weights).is_file():
            raise UserError(f"config key models.{name}.weights: weights file not found: {weights}")


def frozen_models(config: dict) -> list[str]:
    """Models trained on cached backbone features (rule extract_features)."""
    return [m for m, s in config["models"].items() if s["architecture"] == "resnet50_frozen"]


def code_version(*modules: str) -> str:
    """Short hash of package modules' source, passed to rules as a param.

    Snakemake's code trigger only sees a rule's own script; hashing the package modules a stage
    imports makes an edit of that stage's logic rerun exactly that stage and its dependants.
    """
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        digest.update(module.encode())
        digest.update((PACKAGE_DIR / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]
