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
from dataclasses import asdict, dataclass, replace
from typing import Any

import jsonschema

from quiltflow.core.architectures import architecture, backbone_spec, pretrained_name, weights_name
from quiltflow.core.errors import UserError
from quiltflow.core.schema import fill_defaults, key_path, load_schema


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return load_schema()


def section_schema(section: str) -> dict:
    """The schema of one top-level config section; ``models.*`` is one model's entry."""
    properties = _schema()["properties"]
    if section in ("models.*", "pretraining.*"):
        return properties[section[:-2]]["additionalProperties"]
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


def schema_choices(section: str, key: str) -> tuple[str, ...]:
    """The allowed values (``enum``) of ``section.key`` in the schema."""
    return tuple(section_schema(section)["properties"][key]["enum"])


def schema_bounds(section: str, key: str) -> tuple[Any, Any]:
    """(minimum, maximum) of a numeric key as the schema states them (None where unbounded)."""
    prop = section_schema(section)["properties"][key]
    return prop.get("minimum", prop.get("exclusiveMinimum")), prop.get("maximum", prop.get("exclusiveMaximum"))


# --- data stages (filter_metadata, split_manifests, shards) -----------------------------------


def top_level_value(key: str, value: Any) -> Any:
    """A top-level scalar key (``seed``, ``image_size``) checked against its schema."""
    errors = list(jsonschema.Draft202012Validator(section_schema(key)).iter_errors(value))
    if errors:
        raise UserError(f"config key {key}: {errors[0].message}")
    return value


def _frozen(values: Mapping[str, Any]) -> dict[str, Any]:
    """Lists become tuples: a frozen settings object cannot be changed through a field."""
    return {key: tuple(v) if isinstance(v, list) else v for key, v in values.items()}


@dataclass(frozen=True)
class FilterSettings:
    """The ``filters`` section: which rows and classes filter_metadata keeps."""

    subsets: tuple[str, ...]
    drop_not_histology: bool
    magnifications: tuple[int | None, ...] | None  # None keeps every level, unknown included
    min_image_side: int
    dedupe: bool
    label_policy: str
    min_per_class: int
    top_k_classes: int | None
    exclude_classes: tuple[str, ...]
    classes: tuple[str, ...] | None  # allowed labels (quilt); None accepts any
    single_wsi: bool | None  # None: no filter; True: only single-WSI rows; False: drop them
    near_duplicates: str  # group | drop | off
    near_duplicate_distance: int

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> FilterSettings:
        """From a (possibly partial) ``filters`` section; the schema fills the rest."""
        filters = section_values("filters", values)
        if filters["near_duplicates"] is False:  # YAML 1.1 reads a bare `off` as false
            filters["near_duplicates"] = "off"
        return cls(**_frozen(filters))

    def as_dict(self) -> dict[str, Any]:
        """JSON values (lists), as filter_report.json records them."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}


@dataclass(frozen=True)
class SplitSettings:
    """The ``splits`` section and the top-level ``seed``: how split_manifests splits."""

    fractions: dict[str, float]  # train, val, test
    use_source_val: bool
    seed: int
    folds: int = 1  # >= 2: k-fold cross-validation by video (quiltflow.core.cv)

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, *, seed: int) -> SplitSettings:
        """From a (possibly partial) ``splits`` section and the seed."""
        splits = section_values("splits", values)
        fractions = {name: float(splits["fractions"][name]) for name in ("train", "val", "test")}
        # A sum is no bound a schema can state; validate_config checks it too, but a section
        # built here (a notebook, a test) never went through validate_config.
        total = sum(fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise UserError(f"config key splits.fractions: train+val+test must sum to 1, got {total:g}")
        if splits["folds"] > 1 and splits["use_source_val"]:
            raise UserError("config key splits.use_source_val: cannot be combined with splits.folds >= 2")
        return cls(fractions, splits["use_source_val"], top_level_value("seed", seed), splits["folds"])


@dataclass(frozen=True)
class ShardSettings:
    """The ``tfrecords`` section and the top-level ``image_size``: how shards are written."""

    image_size: int
    jpeg_quality: int
    images_per_shard: int
    framing: str  # center_crop | pad | grid
    grid_size: int  # cells per side when framing is grid

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, *, image_size: int) -> ShardSettings:
        """From a (possibly partial) ``tfrecords`` section and the image size."""
        tfrecords = section_values("tfrecords", values)
        return cls(
            top_level_value("image_size", image_size),
            tfrecords["jpeg_quality"],
            tfrecords["images_per_shard"],
            tfrecords["framing"],
            tfrecords["grid_size"],
        )

    @property
    def records_per_image(self) -> int:
        """Records written for one usable image (grid cells, or 1)."""
        return self.grid_size**2 if self.framing == "grid" else 1

    def preparation(self) -> dict[str, Any]:
        """How an image becomes records (train_info.json ``shards``; prediction prepares new images so)."""
        keys = ("image_size", "jpeg_quality", "framing", "grid_size")
        return {key: getattr(self, key) for key in keys}

    @classmethod
    def from_preparation(cls, values: Mapping[str, Any]) -> ShardSettings:
        """The settings of :meth:`preparation`'s record (``images_per_shard`` at its default)."""
        tfrecords = {key: values[key] for key in ("jpeg_quality", "framing", "grid_size")}
        return cls.from_config(tfrecords, image_size=values["image_size"])


# --- models (train_model, extract_features, evaluate_model) -----------------------------------


@dataclass(frozen=True)
class ModelSettings:
    """One ``models.<name>`` entry with every null resolved from the architecture registry."""

    name: str
    architecture: str
    epochs: int
    batch_size: int
    learning_rate: float
    weights: str  # "none", "imagenet" or a file path
    patience: int
    class_weights: bool
    augment: bool
    dropout: float
    warmup_epochs: int
    finetune_learning_rate: float
    jit_compile: bool
    inject_failure: bool
    # Bag models (Architecture.unit "video", quiltflow.models.mil); the others ignore them.
    max_frames: int = 32  # frames drawn per video per training step
    attention_dim: int = 128  # gated attention's hidden width
    embed_dim: int = 256  # frame embedding width

    @classmethod
    def from_config(cls, values: Mapping[str, Any], name: str) -> ModelSettings:
        """From one model's (possibly partial) config entry; errors name ``models.<name>.<key>``."""
        where = f"models.{name}"
        model = section_values("models.*", values, where=where)
        spec = architecture(model["architecture"], f"config key {where}.architecture")
        weights = weights_name(model["weights"] or spec.default_weights)
        if not spec.accepts_weights and weights != "none":
            raise UserError(f"config key {where}.weights: {spec.name} trains from scratch; use none")
        if pretrained_name(weights) == "":
            raise UserError(f"config key {where}.weights: pretrained: needs a name, e.g. pretrained:simclr")
        augment = spec.default_augment if model["augment"] is None else model["augment"]
        if augment and spec.trains_on_features:
            raise UserError(f"config key {where}.augment: {spec.name} trains on cached features; set false")
        if spec.finetunes_backbone and model["warmup_epochs"] >= model["epochs"]:
            raise UserError(
                f"config key {where}.warmup_epochs: {model['warmup_epochs']} leaves no fine-tune epoch "
                f"of {model['epochs']}"
            )
        learning_rate = float(spec.default_learning_rate if model["learning_rate"] is None else model["learning_rate"])
        ft_lr = model["finetune_learning_rate"]
        return cls(
            name=name,
            architecture=spec.name,
            epochs=model["epochs"],
            batch_size=model["batch_size"],
            learning_rate=learning_rate,
            weights=weights,
            patience=model["patience"],
            class_weights=model["class_weights"],
            augment=augment,
            dropout=float(spec.default_dropout if model["dropout"] is None else model["dropout"]),
            warmup_epochs=model["warmup_epochs"],
            finetune_learning_rate=float(learning_rate / 10 if ft_lr is None else ft_lr),
            jit_compile=model["jit_compile"],
            inject_failure=model["inject_failure"],
            max_frames=model["max_frames"],
            attention_dim=model["attention_dim"],
            embed_dim=model["embed_dim"],
        )

    @property
    def spec(self):
        """This model's architecture registry entry."""
        return architecture(self.architecture)

    def with_weights_file(self, path: str) -> ModelSettings:
        """This model starting from ``path`` (the file a ``pretrained:<name>`` resolves to)."""
        return replace(self, weights=str(path))

    def as_dict(self) -> dict[str, Any]:
        """JSON values for train_info.json (the test-only failure switch left out)."""
        values = asdict(self)
        values.pop("inject_failure")
        return values


# --- pretraining (pretrain_encoder) -----------------------------------------------------------


@dataclass(frozen=True)
class PretrainSettings:
    """One ``pretraining.<name>`` entry with its nulls resolved (image size from the top level)."""

    name: str
    method: str
    backbone: str
    epochs: int
    batch_size: int
    learning_rate: float
    temperature: float
    projection_dim: int
    image_size: int
    pool: str

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, name: str, *, image_size: int) -> PretrainSettings:
        """From one (possibly partial) entry; errors name ``pretraining.<name>.<key>``."""
        entry = section_values("pretraining.*", values, where=f"pretraining.{name}")
        backbone_spec(entry["backbone"], f"config key pretraining.{name}.backbone")
        if entry["image_size"] is None:
            entry["image_size"] = top_level_value("image_size", image_size)
        entry["learning_rate"] = float(entry["learning_rate"])
        entry["temperature"] = float(entry["temperature"])
        return cls(name=name, **entry)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
