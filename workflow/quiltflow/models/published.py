"""Published encoders as backbones: a fetched checkpoint (``quiltflow.dag.encoders``) loaded with
keras-hub, its normalisation and input size inside the model.

``encoder_backbone`` returns the same kind of network as ``quiltflow.models.builders.backbone``:
uint8 RGB ``[B, S, S, 3]`` in, one pooled feature vector out, named ``backbone``; inside it the
``EncoderPreprocess`` layer (resize to the encoder's size, scale to [0, 1], subtract mean, divide
by std) and the keras-hub backbone named ``encoder``. keras-hub converts timm and transformers
checkpoints at load time; it is imported here only, when an encoder model is built or loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
from keras import layers

from quiltflow.core.architectures import encoder_name
from quiltflow.core.errors import UserError
from quiltflow.dag.encoders import EncoderInfo, encoder_info_path

try:  # registers keras-hub's layers: a saved encoder model loads wherever builders is imported
    import keras_hub
except ImportError:  # only the encoder architectures need it (requirements-nodeps.lock)
    keras_hub = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on [0, 1] RGB pixels (torchvision / timm)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="quiltflow")
class EncoderPreprocess(layers.Layer):
    """uint8 RGB -> the encoder's input: resized to ``size`` (when it differs), ``(x / 255 - mean) / std``."""

    def __init__(self, size: int, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.size, self.mean, self.std = int(size), [float(v) for v in mean], [float(v) for v in std]

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype) / 255.0
        if x.shape[1] != self.size or x.shape[2] != self.size:
            x = keras.ops.image.resize(x, (self.size, self.size), interpolation="bilinear")
        mean = keras.ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="quiltflow")
class EncoderPooling(layers.Layer):
    """A feature map ``[B, H, W, C]`` or tokens ``[B, T, C]`` -> ``[B, C]``: avg, max or cls (token 0)."""

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        if self.mode == "cls":
            if len(inputs.shape) != 3:
                raise UserError(f"pooling cls needs tokens [B, T, C], the encoder gives {tuple(inputs.shape)}")
            return inputs[:, 0]
        axes = tuple(range(1, len(inputs.shape) - 1))
        return keras.ops.max(inputs, axis=axes) if self.mode == "max" else keras.ops.mean(inputs, axis=axes)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def encoder_info(weights: str | None) -> EncoderInfo:
    """The record a model's weights name: an encoder_info.json path, or ``encoder:<name>`` (read
    from ``resources/encoders/<name>/``)."""
    name = encoder_name(weights)
    path = Path(encoder_info_path(name) if name is not None else str(weights))
    if path.name != Path(encoder_info_path("x")).name or not path.is_file():
        raise UserError(f"weights: {weights!r}: no encoder record {path}; run rule fetch_encoder first")
    return EncoderInfo.read(path)


def checkpoint_preprocessing(info: EncoderInfo, fallback_size: int) -> tuple[int, list[float], list[float]]:
    """(input size, mean, std): the ``encoders`` entry's values, else the checkpoint's own
    (timm ``pretrained_cfg``; transformers ``preprocessor_config.json``), else ImageNet's and the run's size."""
    folder = Path(info.checkpoint_dir)
    stated: dict = {}
    if info.format == "timm":
        cfg = json.loads((folder / "config.json").read_text()).get("pretrained_cfg") or {}
        size = cfg.get("input_size")  # the training size (test_input_size may be larger)
        stated = {"size": size[-1] if size else None, "mean": cfg.get("mean"), "std": cfg.get("std")}
    elif info.format == "transformers" and (folder / "preprocessor_config.json").is_file():
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        size = cfg.get("crop_size") or cfg.get("size") or {}
        size = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
        stated = {"size": size, "mean": cfg.get("image_mean"), "std": cfg.get("image_std")}
    return (
        int(info.image_size or stated.get("size") or fallback_size),
        list(info.mean or stated.get("mean") or IMAGENET_MEAN),
        list(info.std or stated.get("std") or IMAGENET_STD),
    )


def load_encoder(info: EncoderInfo, image_size: int, load_weights: bool = True) -> keras.Model:
    """The keras-hub backbone of a fetched checkpoint, named ``encoder`` (converted at load time
    from timm / transformers). Load failures are one line naming the encoder and folder."""
    if keras_hub is None:
        raise UserError(f"encoder {info.name}: keras-hub is not installed (pip install --no-deps keras-hub==0.32.0)")
    kwargs = {"image_shape": (image_size, image_size, 3)} if info.format == "timm" else {}
    try:
        return keras_hub.models.Backbone.from_preset(
            info.checkpoint_dir, load_weights=load_weights, name="encoder", **kwargs
        )
    except Exception as exc:  # keras-hub's errors are long: keep the first line
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"encoder {info.name}: cannot load {info.checkpoint_dir} ({info.format}): {first}") from None


def encoder_backbone(weights: str | None, image_size: int) -> keras.Model:
    """uint8 images of ``image_size`` -> pooled features of the encoder ``weights`` names."""
    info = encoder_info(weights)
    size, mean, std = checkpoint_preprocessing(info, image_size)
    encoder = load_encoder(info, size)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = EncoderPreprocess(size, mean, std, name="encoder_preprocess")(inputs)
    x = encoder(x, training=False)
    outputs = EncoderPooling(info.pooling, name="encoder_pooling")(x)
    return keras.Model(inputs, outputs, name="backbone")


def encoder_description(weights: str | None) -> str:
    """Weights provenance for reports, e.g. ``encoder:lunit (hf://..., resnet50, sha256 ...)``."""
    return encoder_info(weights).description()
