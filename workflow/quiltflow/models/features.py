"""Cached ResNet50 features for the frozen-backbone model.

The base is frozen, so its output per image never changes: compute it once per split and train
the head on the cache (an epoch then costs two dense layers instead of a ResNet50 pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from quiltflow.core.errors import UserError
from quiltflow.models.builders import FEATURE_DIM, feature_extractor, weights_description


def extract_features(
    ds_with_ids: tf.data.Dataset,
    *,
    image_size: int,
    weights: str | None,
    batch_size: int,
    seed: int = 0,
    architecture: str | None = None,
) -> dict[str, np.ndarray]:
    """Run the frozen preprocessing + ResNet50 base over ``(images, labels, ids)``.

    Batched elements are used as they come; an unbatched dataset is batched by ``batch_size``.
    Runs in float32 (like the saved evaluation model), one pass, in input order. Returns
    ``{"features": float32 [N, 2048], "labels": int32 [N], "ids": str [N]}``. ``architecture``: a
    published encoder's architecture reads the encoder ``weights`` names (its own feature width).
    """
    spec = ds_with_ids.element_spec
    if not isinstance(spec, tuple) or len(spec) != 3:
        raise UserError("extract_features: dataset must yield (images, labels, ids); use with_ids=True")
    if spec[0].shape.rank == 3:
        ds_with_ids = ds_with_ids.batch(batch_size)
    model = feature_extractor(architecture, image_size, weights, seed)
    model.trainable = False

    @tf.function(reduce_retracing=True)
    def features_of(images):
        return model(images, training=False)

    features, labels, ids = [], [], []
    for images, batch_labels, batch_ids in ds_with_ids.prefetch(tf.data.AUTOTUNE):
        if images.shape[1:] != (image_size, image_size, 3):
            raise UserError(f"extract_features: images are {images.shape[1:]}, expected {image_size}x{image_size}x3")
        features.append(features_of(images).numpy().astype(np.float32))
        labels.append(batch_labels.numpy().astype(np.int32))
        ids.append(batch_ids.numpy())
    if not features:
        return {
            "features": np.zeros((0, int(model.output.shape[-1])), np.float32),
            "labels": np.zeros(0, np.int32),
            "ids": np.zeros(0, dtype=str),
        }
    return {
        "features": np.concatenate(features),
        "labels": np.concatenate(labels),
        # Unicode array, not object: np.load reads it back without allow_pickle.
        "ids": np.array([i.decode("utf-8") for i in np.concatenate(ids)], dtype=str),
    }


def save_features(path: str | Path, data: dict[str, np.ndarray], *, image_size: int, weights: str | None) -> None:
    """Write ``.npz`` with the arrays plus ``image_size`` and ``weights`` (description) scalars."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        features=data["features"],
        labels=data["labels"],
        ids=data["ids"],
        image_size=np.int32(image_size),
        weights=np.array(weights_description(weights)),
    )


def load_features(
    path: str | Path, *, image_size: int | None = None, feature_dim: int | None = FEATURE_DIM
) -> dict[str, Any]:
    """Read a features ``.npz``; checks its image size against ``image_size`` when given and its
    width against ``feature_dim`` (None: any width, e.g. a published encoder's)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable features .npz ({exc})") from None
    missing = {"features", "labels", "ids"} - set(data)
    if missing:
        raise UserError(f"{path}: missing arrays {sorted(missing)}")
    width = data["features"].shape[1] if data["features"].ndim == 2 else 0
    if width == 0 or (feature_dim is not None and width != feature_dim):
        raise UserError(f"{path}: features have shape {data['features'].shape}, expected [N, {feature_dim or 'D'}]")
    if image_size is not None and "image_size" in data and int(data["image_size"]) != int(image_size):
        raise UserError(f"{path}: extracted at image_size {int(data['image_size'])}, training uses {image_size}")
    return data
