"""Model builders: shapes, preprocessing, save/load round trip, weights handling."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import keras  # noqa: E402
from quiltflow.core.architectures import IMAGE, REGISTRY  # noqa: E402
from quiltflow.core.errors import UserError  # noqa: E402
from quiltflow.models import builders as models  # noqa: E402

SIZE = 32  # smallest input ResNet50 (no top) accepts: keeps every test fast


def tiny_images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 3, n).astype(np.int32)


def test_preprocess_layer_matches_keras_resnet50_preprocess_input():
    x, _ = tiny_images()
    ours = np.asarray(models.ResNet50Preprocess()(x))
    ref = keras.applications.resnet50.preprocess_input(x.astype("float32"))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # Channel order really flips: a pure-red pixel becomes large in the *last* (R in BGR) channel.
    red = np.zeros((1, 1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert np.asarray(models.ResNet50Preprocess()(red))[0, 0, 0, 2] == pytest.approx(255 - 123.68, abs=1e-3)


def start_weights(architecture: str, tmp_path: Path) -> str:
    """Random init; an encoder architecture starts from a tiny Keras preset (tests/test_encoders.py)."""
    if not REGISTRY[architecture].uses_encoder:
        return "none"
    from quiltflow.dag.encoders import EncoderSpec, fetch_encoder
    from test_encoders import write_keras_preset

    folder = write_keras_preset(tmp_path / "preset")
    record = tmp_path / "record" / "encoder_info.json"
    fetch_encoder(EncoderSpec.from_config({"preset": str(folder)}, "tiny"), tmp_path / "unused", record)
    return str(record)


# Frame models (unit image) take images; bag models take a video's frame features, and their
# training step and save/load round trip are tests/test_mil.py's (its trained fixture reloads them).
FRAME_ARCHITECTURES = [name for name, spec in REGISTRY.items() if spec.unit == IMAGE]


@pytest.mark.parametrize(
    "architecture",
    # ResNet50 builds and steps take 20 s+ on a busy 2-core machine.
    [a if a == "custom_cnn" else pytest.param(a, marks=pytest.mark.slow) for a in FRAME_ARCHITECTURES],
)
def test_every_architecture_trains_one_step_and_round_trips(architecture, tmp_path):
    x, y = tiny_images()
    model = models.build_model(architecture, 3, SIZE, weights=start_weights(architecture, tmp_path), seed=1)
    if REGISTRY[architecture].finetunes_backbone:
        models.set_backbone_trainable(model, True)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe mode: fails on any Lambda layer
    np.testing.assert_allclose(loaded.predict(x, verbose=0), probs, rtol=1e-5, atol=1e-6)


def test_frozen_model_trains_only_the_head():
    model = models.build_model("resnet50_frozen", 3, SIZE, weights="none")
    head = model.get_layer("head")
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in head.trainable_weights}


@pytest.mark.slow
def test_finetune_unfreezes_base_but_keeps_batchnorm_in_inference():
    x, y = tiny_images(8)
    model = models.build_model("resnet50_finetune", 3, SIZE, weights="none")
    frozen_count = len(model.trainable_weights)
    models.set_backbone_trainable(model, True)
    assert len(model.trainable_weights) > 100 > frozen_count
    resnet = model.get_layer("backbone").get_layer("resnet50")
    bns = [layer for layer in resnet.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    moving = bns[0].moving_mean.numpy().copy()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(bns[0].moving_mean.numpy(), moving)


def test_custom_cnn_is_the_study_architecture():
    model = models.build_model("custom_cnn", 5, 224, weights="none")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 3
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 4
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [128, 5]
    assert model.output.dtype == "float32"


def test_weights_from_local_file(tmp_path):
    donor = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    path = tmp_path / "resnet50_notop.weights.h5"
    donor.save_weights(path)
    model = models.build_model("resnet50_frozen", 3, SIZE, weights=str(path))
    loaded = model.get_layer("backbone").get_layer("resnet50").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, donor.get_weights()))
    assert models.weights_description(str(path)).startswith("file resnet50_notop.weights.h5 (sha256 ")


def test_bad_weights_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        models.build_model("resnet50_frozen", 3, SIZE, weights=str(tmp_path / "nope.h5"))
    with pytest.raises(UserError, match="custom_cnn trains from scratch"):
        models.build_model("custom_cnn", 3, SIZE, weights="imagenet")
    with pytest.raises(UserError, match="architecture"):
        models.build_model("vgg16", 3, SIZE, weights="none")
