"""The one tf.data reader of TFRecord shards, shared by training, feature extraction and evaluation.

Images stay uint8 all the way into the model (every model does its own preprocessing), which
keeps batches 4x smaller than float32 and saved models self-contained.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from quiltflow.core.errors import UserError
from quiltflow.core.tasks import MULTICLASS, MULTILABEL
from quiltflow.records.shard_index import index_shard_files, load_index

__all__ = ["make_dataset", "num_examples", "load_index", "FEATURES"]

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/group": tf.io.FixedLenFeature([], tf.string, default_value=""),
    # Grid framing: the image a cell record was cut from (empty for whole-image records).
    "image/source": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
# What training reads: parsing id strings it never uses, then a map stage to drop them, cost
# ~15 % of read throughput on short epochs (bench_shards.py: ~2,450 vs ~2,890 img/s).
_TRAINING_FEATURES = {k: FEATURES[k] for k in ("image/encoded", "image/label")}

# Record-level shuffle buffer cap: serialized records are ~10-20 KB, so 10k of them is
# ~100-200 MB; shard-order shuffling plus interleaving mixes beyond that.
SHUFFLE_BUFFER_CAP = 10_000
# Shards read at once: enough to mix classes/groups across shards without many open files.
MAX_CYCLE = 16

# Colour jitter for H&E: small, since stain colour carries signal. Values act on [0, 1] pixels.
BRIGHTNESS_DELTA = 0.05
CONTRAST_RANGE = (0.9, 1.1)
SATURATION_RANGE = (0.9, 1.1)
HUE_DELTA = 0.02


IndexPaths = str | os.PathLike | Sequence[str | os.PathLike]


def _as_list(index_paths: IndexPaths) -> list[Path]:
    if isinstance(index_paths, (str, os.PathLike)):
        return [Path(index_paths)]
    return [Path(p) for p in index_paths]


def num_examples(index_paths: IndexPaths) -> int:
    """Exact number of records in one bucket's index JSON, or several buckets' together."""
    return sum(int(load_index(path)["num_records"]) for path in _as_list(index_paths))


def shards_of(index_paths: IndexPaths) -> tuple[list[str], int, int, int | None]:
    """(shard files, records, stored image size, number of labels when the task is multi-label,
    else None) of one or several bucket indexes."""
    files, records, sizes, targets = [], 0, set(), set()
    for path in _as_list(index_paths):
        index = load_index(path)
        files += [str(f) for f in index_shard_files(path, index)]
        records += int(index["num_records"])
        sizes.add(int(index["image_size"]))
        targets.add(int(index["num_classes"]) if index.get("task", MULTICLASS) == MULTILABEL else None)
    where = [str(p) for p in _as_list(index_paths)]
    if len(sizes) != 1:
        raise UserError(f"indexes {where}: need one image size, got {sorted(sizes)}")
    if len(targets) != 1:
        raise UserError(f"indexes {where}: buckets of different tasks or label counts (stale shards?)")
    return files, records, sizes.pop(), targets.pop()


def dihedral_table(size: int) -> np.ndarray:
    """[8, size*size] pixel permutations: the eight flips/90-degree rotations of a square."""
    idx = np.arange(size * size, dtype=np.int32).reshape(size, size)
    views = [v for t in (idx, idx.T) for v in (t, t[:, ::-1], t[::-1, :], t[::-1, ::-1])]
    return np.stack([v.ravel() for v in views])


def random_dihedral(images: tf.Tensor, seed: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """Each image of a square uint8 batch in a random one of its eight dihedral views.

    H&E tiles have no canonical orientation, so all eight views are equally valid. One gather
    through a precomputed permutation per image is much cheaper than per-image flip/rot90 ops
    (each a conditional) or batch-wide ``tf.where`` selects.
    """
    shape = tf.shape(images)
    view = tf.random.stateless_uniform([shape[0]], seed, 0, 8, dtype=tf.int32)
    pixels = tf.reshape(images, [shape[0], -1, 3])
    return tf.reshape(tf.gather(pixels, tf.gather(table, view), batch_dims=1), shape)


# RGB -> YIQ; hue is the angle and saturation the radius of the (I, Q) chroma plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _colour_jitter(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Small per-image brightness/contrast/saturation/hue jitter of a uint8 batch.

    All four are affine in RGB, so each image gets one 3x3 matrix plus an offset: saturation
    and hue scale and rotate the YIQ chroma plane, contrast scales around the image's mean
    colour (as ``tf.image.adjust_contrast``), brightness shifts. The batch then takes one
    einsum and a handful of elementwise passes instead of a chain of per-image ops.
    """
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    brightness = tf.random.stateless_uniform([n, 1, 3], seeds[0], -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast = tf.random.stateless_uniform([n, 1, 1], seeds[1], *CONTRAST_RANGE)
    saturation = tf.random.stateless_uniform([n], seeds[2], *SATURATION_RANGE)
    angle = tf.random.stateless_uniform([n], seeds[3], -HUE_DELTA, HUE_DELTA) * (2.0 * np.pi)
    c, s = saturation * tf.cos(angle), saturation * tf.sin(angle)
    one, zero = tf.ones_like(c), tf.zeros_like(c)
    chroma = tf.reshape(tf.stack([one, zero, zero, zero, c, -s, zero, s, c], axis=1), [n, 3, 3])
    colour = tf.einsum("ij,njk,kl->nil", _YIQ_TO_RGB, chroma, _RGB_TO_YIQ)  # [n, 3, 3]
    x = tf.cast(images, tf.float32)
    mean = tf.reduce_mean(x, axis=[1, 2])[:, None, :]  # [n, 1, 3]
    mixed_mean = tf.einsum("nic,ndc->nid", mean, colour)
    # out = contrast * (colour @ x - mixed_mean) + mixed_mean + brightness, +0.5 so cast rounds.
    offset = (1.0 - contrast) * mixed_mean + brightness * 255.0 + 0.5
    x = tf.einsum("nhwc,ndc->nhwd", x, contrast * colour) + offset[:, None]
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def derived_seed(seed: int | None, stream: int) -> int | None:
    """A distinct seed per random stream, so file order, record order and augmentation differ."""
    return None if seed is None else int(seed) * 7919 + stream


def _records(files: list[str], num_records: int, training: bool, seed: int | None, deterministic: bool):
    """Serialized records of the shards; shuffled (files, then records) when training."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string, shape=[len(files)]))
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=derived_seed(seed, 1), reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(files), MAX_CYCLE)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if training:
        # Shuffle serialized records (small) rather than decoded images (150 KB each at 224^2).
        buffer = max(1, min(num_records, SHUFFLE_BUFFER_CAP))
        ds = ds.shuffle(buffer, seed=derived_seed(seed, 2), reshuffle_each_iteration=True)
    return ds


def _decoder(stored: int, size: int, features: dict, with_ids: bool, num_labels: int | None):
    """record -> (uint8 image [size, size, 3], int32 label[, source image id]); with
    ``num_labels`` (multi-label task) the label is the float32 multi-hot [num_labels] instead."""
    if num_labels is not None:
        features = {**features, "image/labels": tf.io.VarLenFeature(tf.int64)}

    def target(ex: dict) -> tf.Tensor:
        if num_labels is None:
            return tf.cast(ex["image/label"], tf.int32)
        indices = tf.sparse.to_dense(ex["image/labels"])
        return tf.reduce_max(tf.one_hot(indices, num_labels, dtype=tf.float32), axis=0)

    def decode(record: tf.Tensor) -> tuple[tf.Tensor, ...]:
        ex = tf.io.parse_single_example(record, features)
        image = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
        if size != stored:
            image = tf.image.resize(image, [size, size], antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = tf.ensure_shape(image, [size, size, 3])
        label = target(ex)
        # Ids ride along only when asked for: every extra map stage or string feature costs
        # throughput on short epochs (benchmarks/bench_shards.py, check (c)).
        if not with_ids:
            return image, label
        # The id is the source image's: a grid image's cells share it, and evaluation averages them.
        source = ex["image/source"]
        return image, label, tf.where(tf.strings.length(source) > 0, source, ex["image/id"])

    return decode


def _augmented(ds: tf.data.Dataset, size: int, seed: int | None, deterministic: bool) -> tf.data.Dataset:
    """Dihedral transforms + colour jitter on whole batches.

    One seed pair per batch for the stateless ops, from a seeded stream drawn afresh each epoch.
    """
    seeds = tf.data.Dataset.random(seed=derived_seed(seed, 3), rerandomize_each_iteration=True)
    seeds = seeds.batch(2)
    table = tf.constant(dihedral_table(size))

    def augment_batch(batch, pair):
        images, *rest = batch
        pair = tf.random.experimental.stateless_split(pair, num=2)
        images = _colour_jitter(random_dihedral(images, pair[0], table), pair[1])
        return (images, *rest)

    return tf.data.Dataset.zip((ds, seeds)).map(
        augment_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )


def make_dataset(
    index_path: IndexPaths,
    batch_size: int,
    *,
    training: bool,
    augment: bool = False,
    seed: int | None = 0,
    with_ids: bool = False,
    image_size: int | None = None,
) -> tf.data.Dataset:
    """Batched ``(images uint8 [B,S,S,3], labels int32 [B])`` (+ ``ids`` string [B]) of a split
    (labels float32 multi-hot [B, classes] when the index's task is multi-label)
    (one index JSON, or a list: several buckets read as one, e.g. a fold's training buckets).

    ``training=True`` shuffles shard order and records (buffer = split size, capped at
    ``SHUFFLE_BUFFER_CAP``) but does not repeat: Keras runs the epochs, each reshuffled. With an
    integer ``seed`` the batches (order and augmentation) are identical from run to run on CPU;
    ``seed=None`` lets training trade that for throughput. Without ``training`` the order is the
    shards' interleaved order, always the same. ``image_size`` resizes when it differs from the
    index's (the shards are stored at the index's size).
    """
    files, num_records, stored, num_labels = shards_of(index_path)
    size = stored if image_size is None else int(image_size)
    deterministic = seed is not None or not training
    autotune = tf.data.AUTOTUNE

    ds = _records(files, num_records, training, seed, deterministic)
    decode = _decoder(stored, size, FEATURES if with_ids else _TRAINING_FEATURES, with_ids, num_labels)
    ds = ds.map(decode, num_parallel_calls=autotune, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=False)
    if augment:
        ds = _augmented(ds, size, seed, deterministic)
    ds = ds.prefetch(autotune)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)
