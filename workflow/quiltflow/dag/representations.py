"""Frozen representations: what a features-trained model's cached features are, named once.

A model that trains on cached features (``Architecture.trains_on_features``: resnet50_frozen,
encoder_frozen, the bag models) reads the pooled output of a frozen base. Those features depend on
the base (a backbone, or a published encoder), its weights, the input size and the preprocessing
and pooling. Size (``image_size``) and the seed of random weights are run-wide settings, and the
preprocessing and pooling belong to the base (``quiltflow.core.architectures.Backbone``, an
encoders.<name> entry), so the base and the weights name a representation: models of one
representation share one feature cache (rule extract_features, ``quiltflow.core.paths.FEATURES``).
Standard library only: the Snakefile names the caches while it builds the DAG.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePath

from quiltflow.core.architectures import (
    IMAGE,
    REGISTRY,
    Architecture,
    architecture,
    encoder_name,
    is_weights_file,
    pretrained_name,
    weights_name,
)

ENCODER_BASE = "encoder"  # the base part of a published encoder's representation (encoder-<name>)


@dataclass(frozen=True)
class Representation:
    """One frozen representation: its cache's name, and how rule extract_features computes it."""

    name: str  # e.g. resnet50-none, resnet50-imagenet, resnet50-pretrained-simclr, encoder-lunit
    architecture: str  # the frame architecture whose feature extractor computes it
    weights: str  # the normalised weights value (none, imagenet, pretrained:<n>, encoder:<n>, a file)


def _slug(text: str) -> str:
    """A path- and wildcard-safe name part."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.") or "x"


def _base_of(spec: Architecture) -> str:
    return ENCODER_BASE if spec.uses_encoder else str(spec.backbone)


def _extractor(base: str) -> str:
    """The first registered frame architecture on ``base`` (stable: it depends on the registry only)."""
    return next(
        name
        for name, spec in REGISTRY.items()
        if spec.trains_on_features and spec.unit == IMAGE and _base_of(spec) == base
    )


def representation_of(architecture_name: str, weights: str | None) -> Representation:
    """The representation a features-trained architecture with ``weights`` trains on."""
    base = _base_of(architecture(architecture_name))
    weights = weights_name(weights)
    if encoder_name(weights) is not None:
        part = _slug(encoder_name(weights))
        name = f"{ENCODER_BASE}-{part}" if base == ENCODER_BASE else f"{base}-encoder-{part}"
    elif pretrained_name(weights) is not None:
        name = f"{base}-pretrained-{_slug(pretrained_name(weights))}"
    elif is_weights_file(weights):  # the file's stem (readable) and its path's hash (distinct)
        digest = hashlib.sha256(weights.encode("utf-8")).hexdigest()[:8]
        name = f"{base}-{_slug(PurePath(weights).stem)}-{digest}"
    else:
        name = f"{base}-{weights}"  # none, imagenet
    return Representation(name=name, architecture=_extractor(base), weights=weights)


def model_representation(config: dict, model: str) -> Representation:
    """A configured features-trained model's representation (config validated: weights resolved)."""
    entry = config["models"][model]
    return representation_of(entry["architecture"], entry["weights"])


def representations(config: dict) -> dict[str, Representation]:
    """Every representation the configured features-trained models use, by name (sorted)."""
    found = {
        rep.name: rep
        for rep in (
            model_representation(config, model)
            for model, entry in config["models"].items()
            if architecture(entry["architecture"]).trains_on_features
        )
    }
    return dict(sorted(found.items()))
