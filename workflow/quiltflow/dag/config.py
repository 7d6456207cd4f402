"""Config validation: JSON schema (workflow/schemas/config.schema.yaml) plus checks a schema cannot express.

Every failure is one line naming the key or path, raised before any job runs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import jsonschema

from quiltflow.core.architectures import VIDEO, architecture, is_weights_file
from quiltflow.core.errors import UserError
from quiltflow.core.paths import ENCODERS_DIR
from quiltflow.core.schema import fill_defaults, key_path, load_schema
from quiltflow.core.settings import ModelSettings, PretrainSettings, SplitSettings
from quiltflow.dag.encoders import check_model_encoders, encoder_specs, model_encoder_files
from quiltflow.dag.imagenet import model_imagenet_files
from quiltflow.dag.pretraining import check_model_pretraining

# The folders the workflow writes (and `make clean` deletes), relative to the working directory.
# Every rule's outputs and logs lie below one of them (tests/test_data_safety.py); a user's data
# may lie in none of them.
DEMO_DIR = "resources/demo"
DEMO_LOOKUP = f"{DEMO_DIR}/quilt_1M_lookup.csv"
DEMO_IMAGES = f"{DEMO_DIR}/images"
OWNED_FOLDERS = ("results", "logs", DEMO_DIR, ENCODERS_DIR, ".snakemake")


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
    SplitSettings.from_config(config["splits"], seed=config["seed"])  # fractions must sum to 1
    resolve_dataset(config["dataset"], base_dir)
    for name, model in config["models"].items():
        settings = ModelSettings.from_config(model, name)  # one-line errors naming the key
        model["weights"] = settings.weights  # null -> the architecture's default
        _check_weights_file(settings, base_dir)
    for name, entry in config["pretraining"].items():
        PretrainSettings.from_config(entry, name, image_size=config["image_size"])
    check_model_pretraining(config)
    check_model_encoders(config, base_dir)
    _check_local_presets(config, base_dir)
    target_models(config, "explain")  # a target's models must be configured ones
    target_models(config, "predict")  # a bag model predicts videos (rule predict_videos)


def _check_weights_file(settings: ModelSettings, base_dir: Path) -> None:
    """A weights file must exist before any job runs, unless the workflow makes it (results/)."""
    if not is_weights_file(settings.weights) or owned_folder_of(base_dir / settings.weights, base_dir):
        return
    if not (base_dir / settings.weights).is_file():
        raise UserError(f"config key models.{settings.name}.weights: weights file not found: {settings.weights}")


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
            raise UserError(
                "config key dataset.demo.enabled: the demo generates Quilt-format data; set dataset.format: quilt"
            )
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


def _check_local_presets(config: dict, base_dir: Path) -> None:
    """A local encoder folder is only read: it may not lie in a folder `make clean` deletes."""
    for name, spec in encoder_specs(config).items():
        owner = owned_folder_of(base_dir / spec.preset, base_dir) if spec.is_local else None
        if owner is not None:
            raise UserError(
                f"config key encoders.{name}.preset: {spec.preset} lies inside {owner}/, a folder the "
                "workflow writes and `make clean` deletes; keep your encoder outside it"
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
    """Models whose architecture trains on cached backbone features (rule extract_features)."""
    return [name for name, m in config["models"].items() if architecture(m["architecture"]).trains_on_features]


def bag_models(config: dict) -> list[str]:
    """Models whose unit is the video (multiple-instance learning over its cached frame features)."""
    return [name for name, m in config["models"].items() if architecture(m["architecture"]).unit == VIDEO]


def weights_files(config: dict, model: str) -> list[str]:
    """The weights file a model starts from, as a job input: a user's file, a published encoder's
    encoder_info.json (rule fetch_encoder) or the ImageNet weights (rule fetch_imagenet_weights);
    empty for none."""
    weights = config["models"][model]["weights"]
    if is_weights_file(weights):
        return [weights]
    return model_encoder_files(config, model) + model_imagenet_files(config, model)


def target_models(config: dict, section: str) -> list[str]:
    """The models a target (``explain``, ``predict``) acts on: ``<section>.models``, or every
    model when null or empty. A name that is not a configured model is a one-line UserError."""
    names = config.get(section, {}).get("models")
    if not names:
        return sorted(config["models"])
    for name in names:
        if name not in config["models"]:
            raise UserError(
                f"config key {section}.models: {name!r} is not a model of this config; models: {sorted(config['models'])}"
            )
    return sorted(names)


def explain_models(config: dict) -> list[str]:
    """The models rule explain_model explains with Grad-CAM (``explain.models``, else every model):
    the frame models among them (a bag model's explanation is its attention gallery)."""
    bags = set(bag_models(config))
    return [name for name in target_models(config, "explain") if name not in bags]


def explain_bag_models(config: dict) -> list[str]:
    """The bag models of ``explain.models`` (else every bag model): rule explain_attention."""
    bags = set(bag_models(config))
    return [name for name in target_models(config, "explain") if name in bags]
