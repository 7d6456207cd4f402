"""Cached frozen-backbone features and the head trained on them."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.core.settings import ModelSettings  # noqa: E402
from quiltflow.models.builders import build_model  # noqa: E402
from quiltflow.models.features import extract_features, load_features, save_features  # noqa: E402
from quiltflow.models.train import train_frozen_head, train_model  # noqa: E402

SIZE = 32


def tiny(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.int32)
    ids = np.array([f"img/{i:03d}.jpg" for i in range(n)])
    return x, y, ids


@pytest.mark.slow
def test_extract_features_keeps_order_ids_and_matches_the_model_base(tmp_path):
    x, y, ids = tiny(10)
    ds = tf.data.Dataset.from_tensor_slices((x, y, ids)).batch(4)
    data = extract_features(ds, image_size=SIZE, weights="none", batch_size=4, seed=5)
    assert data["features"].shape == (10, 2048) and data["features"].dtype == np.float32
    assert data["labels"].tolist() == y.tolist() and data["ids"].tolist() == ids.tolist()
    # Same features as the base inside the full frozen model built with the same weights/seed.
    model = build_model("resnet50_frozen", 3, SIZE, weights="none", seed=5)
    np.testing.assert_allclose(
        data["features"], model.get_layer("backbone").predict(x, verbose=0), rtol=1e-4, atol=1e-4
    )
    # An unbatched dataset is batched by batch_size, with the same result.
    unbatched = tf.data.Dataset.from_tensor_slices((x, y, ids))
    again = extract_features(unbatched, image_size=SIZE, weights="none", batch_size=3, seed=5)
    np.testing.assert_allclose(again["features"], data["features"], rtol=1e-4, atol=1e-4)

    path = tmp_path / "f" / "train.npz"
    save_features(path, data, image_size=SIZE, weights="none")
    back = load_features(path, image_size=SIZE)
    assert back["ids"].tolist() == ids.tolist() and np.array_equal(back["features"], data["features"])
    assert str(back["weights"]) == "random init (none)"
    with pytest.raises(UserError, match="image_size 32, training uses 64"):
        load_features(path, image_size=64)


def test_extract_features_needs_ids():
    x, y, _ = tiny(2)
    with pytest.raises(UserError, match="with_ids"):
        extract_features(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(2), image_size=SIZE, weights="none", batch_size=2
        )


@pytest.mark.slow
def test_head_on_cached_features_equals_head_trained_through_frozen_base(tmp_path):
    """Same init (seeded head), same batches (one full batch per epoch): same trained model."""
    x, y, ids = tiny(12)
    settings = {
        "architecture": "resnet50_frozen",
        "epochs": 3,
        "batch_size": 12,
        "learning_rate": 1e-3,
        "weights": "none",
        "patience": 10,
        "dropout": 0.0,
    }
    images = tf.data.Dataset.from_tensor_slices((x, y)).batch(12)
    feats = extract_features(
        tf.data.Dataset.from_tensor_slices((x, y, ids)).batch(12),
        image_size=SIZE,
        weights="none",
        batch_size=12,
        seed=0,
    )
    common = dict(settings=ModelSettings.from_config(settings, "frozen"), num_classes=3, image_size=SIZE, seed=0)
    cached = train_frozen_head(feats, feats, out_dir=tmp_path / "cached", shuffle=False, **common)
    through = train_model(images, images, out_dir=tmp_path / "through", **common)
    assert cached["epochs_run"] == through["epochs_run"] == 3
    assert cached["best_epoch"] == through["best_epoch"]
    a = keras.models.load_model(tmp_path / "cached" / "model.keras")
    b = keras.models.load_model(tmp_path / "through" / "model.keras")
    for wa, wb in zip(a.get_layer("head").get_weights(), b.get_layer("head").get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-5)
    # The saved cached-feature model is a full image model that reproduces the head on features.
    head_probs = keras.models.load_model(tmp_path / "cached" / "checkpoints" / "best.keras").predict(
        feats["features"], verbose=0
    )
    np.testing.assert_allclose(a.predict(x, verbose=0), head_probs, rtol=1e-4, atol=1e-5)
    # And training changed the head (the comparison is not between two untouched inits).
    init = build_model("resnet50_frozen", 3, SIZE, weights="none", seed=0).get_layer("head").get_weights()
    assert not np.allclose(init[0], a.get_layer("head").get_weights()[0])
