"""Config validation: JSON schema (workflow/schemas/config.schema.yaml) plus checks a schema cannot express.

Every failure is one line naming the key or path, raised before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from quiltflow.errors import UserError

# Backbone weights when a model sets none (schema null): the study trained the CNN from scratch
# and used ImageNet ResNet50s.
DEFAULT_WEIGHTS = {"custom_cnn": "none", "resnet50_frozen": "imagenet", "resnet50_finetune": "imagenet"}

# The folders the workflow writes (and `make clean` deletes), relative to the working directory.
# Every rule's outputs and logs lie below one of them (tests/test_data_safety.py); a user's data
# may lie in none of them.
DEMO_DIR = "resources/demo"
DEMO_LOOKUP = f"{DEMO_DIR}/quilt_1M_lookup.csv"
DEMO_IMAGES = f"{DEMO_DIR}/images"
OWNED_FOLDERS = ("results", "logs", DEMO_DIR, ".snakemake")

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
    resolve_dataset(config["dataset"], base_dir)
    for name, model in config["models"].items():
        if model["weights"] is None:  # the schema's null: this architecture's default
            model["weights"] = DEFAULT_WEIGHTS[model["architecture"]]
        weights = model["weights"]
        if model["architecture"] == "custom_cnn" and weights not in ("none",):
            raise UserError(f"config key models.{name}.weights: custom_cnn trains from scratch; use none")
        if weights not in ("imagenet", "none") and not (base_dir / weights).is_file():
            raise UserError(f"config key models.{name}.weights: weights file not found: {weights}")


def resolve_dataset(dataset: dict, base_dir: Path = Path(".")) -> None:
    """Decide demo or the user's data, in place; the user's data is only ever read.

    A config that names ``dataset.image_root`` or ``dataset.metadata`` is a run on that data by
    construction (the demo is off unless asked for); the demo writes only under ``DEMO_DIR``.
    Asking for both is a one-line error, before any job could touch the user's files.
    """
    named = {key: dataset[key] for key in ("image_root", "metadata") if dataset.get(key)}
    demo = dataset["demo"]
    if demo["enabled"] is None:  # the schema's null: the demo exactly when no data is named
        demo["enabled"] = not named
    if demo["enabled"]:
        if named:
            key, value = next(iter(named.items()))
            raise UserError(
                f"config key dataset.demo.enabled: true, but dataset.{key} names your data ({value}); "
                "remove dataset.demo.enabled (or set it to false) to run on your data, "
                f"or remove dataset.{key} to run the demo (it writes only under {DEMO_DIR}/)"
            )
        if dataset["format"] != "quilt":
            raise UserError("config key dataset.demo.enabled: the demo generates Quilt-format data; set dataset.format: quilt")
        dataset["metadata"], dataset["image_root"] = DEMO_LOOKUP, DEMO_IMAGES
        return
    _check_user_data(dataset, named, base_dir)


def _check_user_data(dataset: dict, named: dict, base_dir: Path) -> None:
    if "image_root" not in named:
        raise UserError("config key dataset.image_root: required when the demo is off (dataset.demo.enabled: false)")
    if dataset["format"] in ("quilt", "csv"):
        if "metadata" not in named:
            raise UserError(f"config key dataset.metadata: required for format {dataset['format']}")
        if not (base_dir / dataset["metadata"]).is_file():
            raise UserError(f"config key dataset.metadata: file not found: {dataset['metadata']}")
    if not (base_dir / dataset["image_root"]).is_dir():
        raise UserError(f"config key dataset.image_root: folder not found: {dataset['image_root']}")
    for key, value in named.items():
        owner = owned_folder_of(base_dir / value, base_dir)
        if owner is not None:
            raise UserError(
                f"config key dataset.{key}: {value} lies inside {owner}/, a folder the workflow writes "
                "and `make clean` deletes; keep your data outside it"
            )


def owned_folder_of(path: Path, base_dir: Path = Path(".")) -> str | None:
    """The workflow-owned folder (``OWNED_FOLDERS``) that holds ``path``, or None."""
    resolved = Path(os.path.abspath(path))
    for folder in OWNED_FOLDERS:
        owned = Path(os.path.abspath(base_dir / folder))
        if resolved == owned or owned in resolved.parents:
            return folder
    return None


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
