"""Multiple-instance learning over a video's frames: the video (``group``) is the unit.

A *bag* is one video's cached frame features (rule ``extract_features``). ``abmil`` pools the
embedded frames with gated attention (Ilse, Tomczak and Welling 2018):
``a = softmax(w^T (tanh(V h) * sigmoid(U h)))`` over the bag's real (unmasked) frames;
``meanmil`` takes their plain mean, into the same classifier, so the value of attention is
measured. Training draws up to ``max_frames`` frames per bag per step (seeded); evaluation and
validation use all of a video's frames, zero-padded and masked. The frames are first standardised
with statistics of the training frames only (``FrameStatistics``), stored inside the model: raw
pooled ResNet50 features (row norms ~100) left gated attention unable to fit at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from quiltflow.core.architectures import ATTENTION_POOLING, MEAN_POOLING
from quiltflow.core.errors import UserError
from quiltflow.core.tasks import MULTICLASS, MULTILABEL, head_activation

POOLING_LAYER = "pooling"  # the layer whose second output is the attention
EVAL_WIDTH_STEP = 16  # evaluation pads a batch's bags to a multiple of this (few distinct shapes)


@keras.saving.register_keras_serializable(package="quiltflow")
class GatedAttentionPooling(layers.Layer):
    """``[h, mask]`` -> ``(sum_k a_k h_k, a)``: gated attention weights over the unmasked frames."""

    def __init__(self, attention_dim: int = 128, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.attention_dim, self.seed = int(attention_dim), int(seed)
        init = keras.initializers.GlorotUniform
        self.V = layers.Dense(self.attention_dim, activation="tanh", kernel_initializer=init(seed), name="V")
        self.U = layers.Dense(self.attention_dim, activation="sigmoid", kernel_initializer=init(seed + 1), name="U")
        self.w = layers.Dense(1, kernel_initializer=init(seed + 2), name="w")

    def build(self, input_shape):
        h_shape = input_shape[0]
        for dense in (self.V, self.U):
            dense.build(h_shape)
        self.w.build((*h_shape[:-1], self.attention_dim))

    def call(self, inputs):
        h, mask = inputs
        scores = keras.ops.squeeze(self.w(self.V(h) * self.U(h)), axis=-1)  # [B, N]
        return _pool(h, _masked_softmax(scores, mask))

    def get_config(self):
        return {**super().get_config(), "attention_dim": self.attention_dim, "seed": self.seed}


@keras.saving.register_keras_serializable(package="quiltflow")
class MaskedMeanPooling(layers.Layer):
    """``[h, mask]`` -> ``(mean of the unmasked h, their uniform weights)``."""

    def call(self, inputs):
        h, mask = inputs
        mask = keras.ops.cast(mask, h.dtype)
        weights = mask / keras.ops.maximum(keras.ops.sum(mask, axis=1, keepdims=True), 1.0)
        return _pool(h, weights)


def _masked_softmax(scores, mask):
    """Softmax over axis 1 where ``mask`` is 1; padded frames get exactly 0."""
    mask = keras.ops.cast(mask, scores.dtype)
    very_negative = keras.ops.cast(-1e4 if scores.dtype == "float16" else -1e9, scores.dtype)
    scores = keras.ops.where(mask > 0, scores, very_negative)
    weights = keras.ops.softmax(scores, axis=1) * mask
    return weights / keras.ops.maximum(keras.ops.sum(weights, axis=1, keepdims=True), 1e-12)


def _pool(h, weights):
    return keras.ops.einsum("bn,bnd->bd", weights, h), weights


@dataclass(frozen=True)
class FrameStatistics:
    """Per-feature mean and variance of the frames a bag model standardises with (training frames)."""

    mean: np.ndarray
    variance: np.ndarray

    @classmethod
    def of(cls, bags: Bags) -> FrameStatistics:
        """Of ``bags``' frames; a feature constant over them gets variance 1 (it is only centred),
        so an unseen value cannot be divided by ~0."""
        features = np.asarray(bags.features, np.float64)
        variance = features.var(axis=0)
        variance[variance < 1e-12] = 1.0
        return cls(features.mean(axis=0).astype(np.float32), variance.astype(np.float32))


def bag_model(
    pooling: str,
    num_classes: int,
    feature_dim: int,
    *,
    statistics: FrameStatistics | None = None,
    attention_dim: int = 128,
    embed_dim: int = 256,
    dropout: float = 0.0,
    seed: int = 0,
    task: str = MULTICLASS,
) -> keras.Model:
    """``{"features": [B, N, D], "mask": [B, N]}`` -> class probabilities [B, k] (softmax; sigmoid
    for multi-label): standardise each frame (``statistics``; None: as given), embed it, pool the
    bag (``pooling``: attention | mean), classify."""
    features = keras.Input((None, feature_dim), name="features")
    mask = keras.Input((None,), name="mask")
    init = keras.initializers.GlorotUniform
    h = features
    if statistics is not None:
        h = layers.Normalization(mean=statistics.mean, variance=statistics.variance, name="standardise")(h)
    h = layers.Dense(embed_dim, activation="relu", kernel_initializer=init(seed), name="embed")(h)
    h = layers.Dropout(dropout, seed=seed)(h)
    if pooling == ATTENTION_POOLING:
        pool = GatedAttentionPooling(attention_dim, seed=seed + 1, name=POOLING_LAYER)
    elif pooling == MEAN_POOLING:
        pool = MaskedMeanPooling(name=POOLING_LAYER)
    else:
        raise UserError(f"pooling: {pooling!r} is not one of {ATTENTION_POOLING}, {MEAN_POOLING}")
    bag, _ = pool([h, mask])
    # float32 output: numerically sane under the mixed_float16 policy on GPU.
    probs = layers.Dense(
        num_classes, activation=head_activation(task), dtype="float32", kernel_initializer=init(seed + 4), name="probs"
    )(bag)
    return keras.Model({"features": features, "mask": mask}, probs, name=f"{pooling}_mil")


def attention_model(model: keras.Model) -> keras.Model:
    """The same inputs -> (probabilities, attention [B, N]) of a (loaded) bag model."""
    return keras.Model(model.inputs, [model.output, model.get_layer(POOLING_LAYER).output[1]])


# --- bags ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bags:
    """Frames grouped into videos: ``features`` [frames, D], ``ids`` [frames] and per bag its
    ``group``, ``label`` (class index, or a multi-hot row) and ``members`` (frame rows)."""

    features: np.ndarray
    ids: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    members: tuple[np.ndarray, ...]

    @classmethod
    def from_frames(cls, features, labels, ids, groups, where: str = "features") -> Bags:
        """Group frames by ``groups`` (first-seen order). A video's label: multiclass, its most
        frequent frame label (ties: the smaller index); multi-label, every label any frame carries."""
        features, labels = np.asarray(features, np.float32), np.asarray(labels)
        ids, groups = np.asarray(ids).astype(str), np.asarray(groups).astype(str)
        if not len(features) == len(labels) == len(ids) == len(groups) or features.ndim != 2:
            raise UserError(f"{where}: features, labels, ids and groups do not have one row per frame")
        if len(features) == 0:
            raise UserError(f"{where}: no frames")
        names, first, bag_of = np.unique(groups, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))  # bags in first-seen order
        bag_of = rank[bag_of]
        first_seen = names[np.argsort(first)]
        members = tuple(np.flatnonzero(bag_of == i) for i in range(len(first_seen)))
        bag_labels = np.stack([_bag_label(labels[m]) for m in members])
        return cls(features, ids, first_seen, bag_labels, members)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.members)

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Videos per class (multi-label: videos carrying each label)."""
        if self.multilabel:
            return self.labels.sum(axis=0).astype(np.int64)
        return np.bincount(self.labels.astype(np.int64), minlength=num_classes)[:num_classes]


def _bag_label(frame_labels: np.ndarray) -> np.ndarray:
    if frame_labels.ndim == 2:
        return frame_labels.max(axis=0)
    values, counts = np.unique(frame_labels, return_counts=True)
    return np.asarray(values[np.argmax(counts)])  # np.unique sorts: ties go to the smaller index


class BagBatches(keras.utils.PyDataset):
    """Batches of bags: ``({"features": [B, W, D], "mask": [B, W]}, labels[, sample weights])``.

    Training (``max_frames`` set): each step draws up to ``max_frames`` frames of every bag,
    seeded by (seed, epoch, step); bags are shuffled per epoch; width ``max_frames``. Otherwise
    every frame of every bag, in order, padded to a multiple of ``EVAL_WIDTH_STEP``.
    """

    def __init__(self, bags: Bags, batch_size: int, *, max_frames=None, seed=0, bag_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.bags, self.batch_size, self.max_frames = bags, int(batch_size), max_frames
        self.seed, self.epoch, self.bag_weights = int(seed), 0, bag_weights
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.max_frames is None:
            return np.arange(len(self.bags))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.bags))

    def __len__(self) -> int:
        return math.ceil(len(self.bags) / self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()

    def frames_of(self, index: int) -> list[np.ndarray]:
        """The frame rows each bag of batch ``index`` contributes."""
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.max_frames is None:
            return [self.bags.members[b] for b in chosen]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return [_draw(self.bags.members[b], self.max_frames, rng) for b in chosen]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        inputs = self.inputs(self.frames_of(index))
        labels = self.bags.labels[chosen].astype(np.float32 if self.bags.multilabel else np.int32)
        if self.bag_weights is None:
            return inputs, labels
        return inputs, labels, self.bag_weights[chosen].astype(np.float32)

    def inputs(self, frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        longest = max(len(rows) for rows in frames)
        width = self.max_frames or EVAL_WIDTH_STEP * math.ceil(longest / EVAL_WIDTH_STEP)
        features = np.zeros((len(frames), width, self.bags.features.shape[1]), np.float32)
        mask = np.zeros((len(frames), width), np.float32)
        for row, rows in enumerate(frames):
            features[row, : len(rows)] = self.bags.features[rows]
            mask[row, : len(rows)] = 1.0
        return {"features": features, "mask": mask}


def _draw(rows: np.ndarray, max_frames: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) <= max_frames:
        return rows
    return np.sort(rng.choice(rows, size=max_frames, replace=False))


def bag_weights(bags: Bags, class_weight: dict[int, float] | None) -> np.ndarray | None:
    """Each bag's loss weight from per-class weights counted over videos (multiclass only)."""
    if class_weight is None or bags.multilabel:
        return None
    return np.array([class_weight[int(label)] for label in bags.labels], np.float32)


def predict_bags(model: keras.Model, bags: Bags, batch_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probabilities [bags, k], per bag its frames' attention, in ``bags.members`` order) on all frames."""
    scorer = attention_model(model)
    batches = BagBatches(bags, batch_size)
    probs, attention = [], []
    for index in range(len(batches)):
        frames = batches.frames_of(index)
        out, weights = scorer.predict_on_batch(batches.inputs(frames))
        probs.append(np.asarray(out, np.float64))
        attention.extend(np.asarray(weights, np.float64)[row, : len(rows)] for row, rows in enumerate(frames))
    return np.concatenate(probs), attention


def task_of(bags: Bags) -> str:
    return MULTILABEL if bags.multilabel else MULTICLASS
