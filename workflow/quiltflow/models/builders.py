"""Builders of the registered architectures (``quiltflow.core.architectures``) and backbone weights.

Every model takes uint8-range RGB pixels ``[B, S, S, 3]`` and preprocesses inside, so a saved
``.keras`` file is self-contained: evaluation feeds it the same images as training did. The one
custom layer (``ResNet50Preprocess``) is registered, so ``keras.models.load_model`` works in safe
mode once ``quiltflow.models.builders`` is imported.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from quiltflow.core.architectures import (
    ATTENTION_POOLING,
    IMAGENET,
    MEAN_POOLING,
    NO_WEIGHTS,
    architecture,
    backbone_spec,
    weights_name,
)
from quiltflow.core.errors import UserError
from quiltflow.core.jsonio import sha256_file
from quiltflow.core.paths import ENCODER_INFO_FILE, IMAGENET_WEIGHTS
from quiltflow.core.tasks import MULTICLASS, head_activation
from quiltflow.models.published import encoder_backbone, encoder_description, encoder_name

FEATURE_DIM = 2048  # ResNet50 global-average-pooled output width

# Caffe-mode ImageNet channel means, in BGR order (keras.applications.imagenet_utils).
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="quiltflow")
class ResNet50Preprocess(layers.Layer):
    """``keras.applications.resnet50.preprocess_input`` as a layer: RGB->BGR, subtract means.

    A registered layer instead of a ``Lambda`` so saved models load in safe mode.
    """

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        x = keras.ops.flip(x, axis=-1)  # RGB -> BGR: the ImageNet weights were trained on BGR
        mean = keras.ops.convert_to_tensor(IMAGENET_MEAN_BGR, dtype=self.compute_dtype)
        return x - mean


def _image_input(image_size: int) -> keras.KerasTensor:
    # uint8 input: 4x less host->device traffic than float32; layers cast on the device.
    return keras.Input((image_size, image_size, 3), dtype="uint8", name="image")


def custom_cnn(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None = None,
    dropout: float = 0.25,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """The study's small CNN: 3 x (conv 3x3 ReLU, max-pool 2x2, dropout), dense 128, softmax
    (sigmoid for a multi-label ``task``).

    From scratch (the registry accepts no weights for it); Keras' global seed initialises it.
    """
    inputs = _image_input(image_size)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    # float32 softmax/sigmoid: stays numerically sane under the mixed_float16 policy on GPU.
    outputs = layers.Dense(num_classes, activation=head_activation(task), dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def dense_head(
    num_classes: int, dropout: float = 0.0, seed: int = 0, task: str = MULTICLASS, feature_dim: int = FEATURE_DIM
) -> keras.Model:
    """Dense 512 ReLU + softmax (sigmoid for a multi-label ``task``) on pooled backbone features
    (2048-d for ResNet50; a published encoder's own width).

    Explicitly seeded initializers: the head gets the same initial weights whether it is built
    alone (trained on cached features) or inside the full model (trained through the base).
    """
    inputs = keras.Input((feature_dim,), name="features")
    x = layers.Dense(512, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    x = layers.Dropout(dropout, seed=seed)(x)
    outputs = layers.Dense(
        num_classes,
        activation=head_activation(task),
        dtype="float32",
        kernel_initializer=keras.initializers.GlorotUniform(seed + 1),
        name="probs",
    )(x)
    return keras.Model(inputs, outputs, name="head")


def backbone(image_size: int, weights: str | None, seed: int = 0) -> keras.Model:
    """uint8 images -> 2048-d features: preprocessing + ResNet50 (no top, average pooling).

    The base always runs with ``training=False`` so BatchNorm uses its moving statistics, also
    while fine-tuning. ``weights="none"`` initialises from ``seed`` (it reseeds Keras' global
    RNG), so feature extraction and the final frozen model get the same random base.
    """
    weights_file = resolve_weights(weights)
    if weights_file is None:
        keras.utils.set_random_seed(seed)
    base = resnet50_base(image_size)
    if weights_file is not None:
        try:
            base.load_weights(weights_file)
        except Exception as exc:  # h5py / shape mismatch errors are long: keep the first line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"weights file {weights_file} does not fit ResNet50 (no top): {first}") from None
    inputs = _image_input(image_size)
    x = ResNet50Preprocess(name="resnet50_preprocess")(inputs)
    outputs = base(x, training=False)
    return keras.Model(inputs, outputs, name="backbone")


def resnet50_base(image_size: int) -> keras.Model:
    """The bare ResNet50 (no top, global average pooling, random init) named ``resnet50``.

    Its ``save_weights`` file (``pretrain_encoder``) is what ``backbone(weights=<file>)`` loads.
    """
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg"
    )


def backbone_base(name: str, image_size: int) -> tuple[layers.Layer, keras.Model]:
    """(preprocessing layer for uint8 RGB, bare base) of a registered backbone, random init."""
    spec = backbone_spec(name)
    return globals()[spec.preprocess](name=f"{spec.name}_preprocess"), globals()[spec.builder](image_size)


def _frozen_base_with_head(
    name: str, base: keras.Model, num_classes: int, image_size: int, dropout: float, seed: int, task: str
) -> keras.Model:
    """uint8 images -> ``base`` (frozen; a fine-tuning run unfreezes it later) -> dense head."""
    base.trainable = False
    head = dense_head(num_classes, dropout, seed, task, feature_dim=int(base.output.shape[-1]))
    inputs = _image_input(image_size)
    return keras.Model(inputs, head(base(inputs)), name=name)


def _resnet50(
    name: str, num_classes: int, image_size: int, weights: str | None, dropout: float, seed: int, task: str
) -> keras.Model:
    base = backbone(image_size, weights, seed)
    return _frozen_base_with_head(name, base, num_classes, image_size, dropout, seed, task)


def resnet50_frozen(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """Frozen ImageNet ResNet50 feature extractor + trainable dense head."""
    return _resnet50("resnet50_frozen", num_classes, image_size, weights, dropout, seed, task)


def resnet50_finetune(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """Same network as ``resnet50_frozen``; training unfreezes the base after a head warm-up.

    Built frozen: ``set_backbone_trainable(model, True)`` starts the fine-tune phase.
    """
    return _resnet50("resnet50_finetune", num_classes, image_size, weights, dropout, seed, task)


def abmil(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
    attention_dim: int = 128,
    embed_dim: int = 256,
) -> keras.Model:
    """Gated-attention MIL over a video's cached frame features (``quiltflow.models.mil``); its
    input is a bag of features, not images, so ``image_size`` and ``weights`` (those of the cached
    features) do not enter it."""
    from quiltflow.models.mil import bag_model

    return bag_model(
        ATTENTION_POOLING,
        num_classes,
        FEATURE_DIM,
        attention_dim=attention_dim,
        embed_dim=embed_dim,
        dropout=dropout,
        seed=seed,
        task=task,
    )


def meanmil(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
    attention_dim: int = 128,
    embed_dim: int = 256,
) -> keras.Model:
    """abmil's control: the masked mean of a video's embedded frame features into the same classifier."""
    from quiltflow.models.mil import bag_model

    return bag_model(MEAN_POOLING, num_classes, FEATURE_DIM, embed_dim=embed_dim, dropout=dropout, seed=seed, task=task)


def _encoder_model(
    name: str, num_classes: int, image_size: int, weights: str | None, dropout: float, seed: int, task: str
) -> keras.Model:
    base = encoder_backbone(weights, image_size)
    return _frozen_base_with_head(name, base, num_classes, image_size, dropout, seed, task)


def encoder_frozen(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """Frozen published encoder (``weights``: its encoder_info.json or ``encoder:<name>``) + dense head."""
    return _encoder_model("encoder_frozen", num_classes, image_size, weights, dropout, seed, task)


def encoder_finetune(
    num_classes: int,
    image_size: int,
    *,
    weights: str | None,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """Same network as ``encoder_frozen``; training unfreezes the encoder after a head warm-up."""
    return _encoder_model("encoder_finetune", num_classes, image_size, weights, dropout, seed, task)


def feature_extractor(
    architecture_name: str | None, image_size: int, weights: str | None, seed: int = 0
) -> keras.Model:
    """The frozen base whose pooled features a features-trained architecture's head learns on."""
    if architecture_name is not None and architecture(architecture_name).uses_encoder:
        return encoder_backbone(weights, image_size)
    return backbone(image_size, weights, seed)


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze/unfreeze the base (ResNet50 or a published encoder); BatchNorm layers, at any depth
    of its nested models, always stay frozen (Keras recipe)."""
    base = model.get_layer("backbone")
    base.trainable = trainable
    for layer in base._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def output_layer(model: keras.Model) -> tuple[layers.Layer, str]:
    """The model's last layer (looking into nested models) and its activation's name ("" unless
    it is a Dense layer): what prediction checks against the task and Grad-CAM differentiates."""
    layer = model.layers[-1]
    while isinstance(layer, keras.Model):
        layer = layer.layers[-1]
    if not isinstance(layer, layers.Dense):
        return layer, ""
    return layer, getattr(layer.activation, "__name__", "")


def build_model(
    name: str,
    num_classes: int,
    image_size: int,
    *,
    weights: str | None,
    dropout: float | None = None,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """Build a registered architecture with its builder; ``dropout=None`` uses its default;
    ``task`` (quiltflow.core.tasks) picks the output activation."""
    spec = architecture(name)
    if not spec.accepts_weights and weights_name(weights) != NO_WEIGHTS:
        raise UserError(f"weights: {spec.name} trains from scratch; use 'none', not {weights!r}")
    builder = globals()[spec.builder]
    dropout = spec.default_dropout if dropout is None else dropout
    return builder(num_classes, image_size, weights=weights, dropout=dropout, seed=seed, task=task)


# --- weights ---------------------------------------------------------------------------------


def resolve_weights(weights: str | None) -> str | None:
    """Return the weights file to load (``None`` for random init).

    "imagenet" is the file rule fetch_imagenet_weights made (``quiltflow.dag.imagenet``), relative
    to the working directory as every job runs there: never the Keras cache, never the network, so
    a compute node without internet builds the same model. Missing, it is a one-line ``UserError``.
    """
    name = weights_name(weights)
    if name == NO_WEIGHTS:
        return None
    if name == IMAGENET:
        target = Path(IMAGENET_WEIGHTS)
        if not target.is_file():
            raise UserError(
                f"weights: imagenet: {target} not found (in {Path.cwd()}); rule fetch_imagenet_weights makes it: "
                f"run snakemake in the workflow's folder (`snakemake {target}`)"
            )
        return str(target)
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"weights: file not found: {path}")
    return str(path)


def weights_description(weights: str | None) -> str:
    """Human-readable weights source for reports, e.g. "ImageNet (Keras ResNet50 notop)"."""
    name = weights_name(weights)
    if name == NO_WEIGHTS:
        return "random init (none)"
    if name == IMAGENET:
        return "ImageNet (Keras ResNet50 notop)"
    if encoder_name(name) is not None or Path(name).name == ENCODER_INFO_FILE:
        return encoder_description(name)
    path = Path(name).expanduser()
    if not path.is_file():
        return f"file {path.name} (missing)"
    return f"file {path.name} (sha256 {sha256_file(path)[:12]})"
