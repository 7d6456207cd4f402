"""Two random views of every image of a uint8 batch, for contrastive pretraining (SimCLR).

Everything is a batched TensorFlow op on the whole batch (no per-image ops, no Python loops), and
all randomness is stateless from one seed pair, so the same seed gives the same views.

The augmentations are chosen for H&E under varied screen capture (Quilt's video frames): random
resized crops (scale and framing change), all eight dihedral transforms (tissue has no up),
stain-aware colour jitter in HED optical-density space (stain amount and scanner/video colour
change, the hue stays H&E-like), mild brightness/contrast and mild blur (focus and compression).
No ImageNet-style strong hue/saturation jitter or greyscale: stain colour carries signal.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from quiltflow.models.pipeline import dihedral_table, random_dihedral

__all__ = ["simclr_views", "hed_jitter"]

# Random resized crop: fraction of the image's area and aspect ratio (w/h) of the crop. 0.2 (not
# ImageNet SimCLR's 0.08): a screen frame's tissue is one field of view, and at 8 % of it a crop
# of a low-magnification frame is often background or a few nuclei.
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

# HED jitter (Tellez et al. 2019 "HED-light", in natural optical-density units): each stain's
# amount scaled by U(1 - s, 1 + s) and shifted by U(-s, s) OD. 0.05 is a ~5 % change of
# stain amount and transmitted light: what separates labs and captures, small next to the
# difference between stains.
HED_SCALE = 0.05
HED_SHIFT = 0.05
# Mild intensity jitter in RGB (fractions of full range; contrast scales around the mean).
BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.8, 1.2)
# Blur: with probability BLUR_PROB a view is blended with its Gaussian blur (sigma BLUR_SIGMA px)
# by a weight U(0, 1): defocus and video compression soften frames, so sharpness is no cue.
BLUR_PROB = 0.5
BLUR_SIGMA = 1.0

# Ruifrok & Johnston (2001) stain OD vectors, rows H, E, DAB (skimage.color.rgb_from_hed).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
# Optical density -log((x + 1) / 256): the +1 keeps black pixels finite, and 255 maps to ~0 OD.
_OD_WHITE = 256.0


def _crop_boxes(n: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> tf.Tensor:
    """[n, 4] normalised (y1, x1, y2, x2) boxes of random area fraction and aspect ratio.

    A side that would exceed the image is clipped to it (torchvision retries instead), which only
    shifts a few of the largest crops towards the full image.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    area = tf.random.stateless_uniform([n], seeds[0], scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform([n], seeds[1], math.log(ratio[0]), math.log(ratio[1]))
    width = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), 1.0)
    height = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), 1.0)
    y1 = tf.random.stateless_uniform([n], seeds[2]) * (1.0 - height)
    x1 = tf.random.stateless_uniform([n], seeds[3]) * (1.0 - width)
    return tf.stack([y1, x1, y1 + height, x1 + width], axis=1)


def hed_jitter(x: tf.Tensor, seed: tf.Tensor, scale: float = HED_SCALE, shift: float = HED_SHIFT) -> tf.Tensor:
    """Per-image stain jitter of float RGB pixels in [0, 255] ``[n, h, w, 3]``.

    Stains = OD @ HED_FROM_RGB; jittered stains (alpha * stains + beta) back in OD are
    OD @ (HED_FROM_RGB diag(alpha) RGB_FROM_HED) + beta @ RGB_FROM_HED: one 3x3 matrix and an
    offset per image, so the batch takes one einsum between the log and the exp.
    """
    n = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    alpha = tf.random.stateless_uniform([n, 3], seeds[0], 1.0 - scale, 1.0 + scale)
    beta = tf.random.stateless_uniform([n, 3], seeds[1], -shift, shift)
    matrix = tf.einsum("ij,nj,jk->nik", HED_FROM_RGB, alpha, RGB_FROM_HED)  # [n, 3, 3]
    offset = tf.einsum("nj,jk->nk", beta, RGB_FROM_HED)[:, None, None, :]
    od = -tf.math.log((x + 1.0) / _OD_WHITE)
    od = tf.einsum("nhwc,ncd->nhwd", od, matrix) + offset
    return _OD_WHITE * tf.exp(-od) - 1.0


def _intensity_jitter(x: tf.Tensor, seed: tf.Tensor, brightness: float, contrast: tuple[float, float]) -> tf.Tensor:
    """Per-image contrast around the image's mean, then a brightness shift (0-255 scale)."""
    n = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    gain = tf.random.stateless_uniform([n, 1, 1, 1], seeds[0], contrast[0], contrast[1])
    delta = tf.random.stateless_uniform([n, 1, 1, 1], seeds[1], -brightness, brightness) * 255.0
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return gain * (x - mean) + mean + delta


def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """[size, size] Gaussian blur along one axis, edges mirrored (as ``mode="SYMMETRIC"``)."""
    radius = max(1, math.ceil(2.5 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((size, size), np.float64)
    for i in range(size):
        for offset, tap in zip(range(-radius, radius + 1), taps):
            j = i + offset
            j = -j - 1 if j < 0 else (2 * size - j - 1 if j >= size else j)
            matrix[i, min(max(j, 0), size - 1)] += tap
    return matrix.astype(np.float32)


def _random_blur(x: tf.Tensor, seed: tf.Tensor, prob: float, sigma: float) -> tf.Tensor:
    """Blend each view with its fixed-sigma blur by a random weight (0 with ``1 - prob``).

    A blend of one blur stands in for a random sigma per image (SimCLR's recipe), which would
    need one convolution per image. The separable blur is two matmuls with a banded matrix:
    ~4x faster on CPU than ``depthwise_conv2d``.
    """
    if prob <= 0.0 or sigma <= 0.0:
        return x
    n = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    on = tf.cast(tf.random.stateless_uniform([n, 1, 1, 1], seeds[0]) < prob, x.dtype)
    weight = on * tf.random.stateless_uniform([n, 1, 1, 1], seeds[1])
    band = tf.constant(_blur_matrix(int(x.shape[1]), sigma))
    blurred = tf.einsum("nhwc,vw->nhvc", tf.einsum("ij,njwc->niwc", band, x), band)
    return x + weight * (blurred - x)


def simclr_views(
    images: tf.Tensor,
    seed: tf.Tensor,
    *,
    out_size: int,
    crop_scale: tuple[float, float] = CROP_SCALE,
    crop_ratio: tuple[float, float] = CROP_RATIO,
    hed_scale: float = HED_SCALE,
    hed_shift: float = HED_SHIFT,
    brightness: float = BRIGHTNESS_DELTA,
    contrast: tuple[float, float] = CONTRAST_RANGE,
    blur_prob: float = BLUR_PROB,
    blur_sigma: float = BLUR_SIGMA,
) -> tf.Tensor:
    """uint8 ``[B, S, S, 3]`` -> uint8 ``[2B, out_size, out_size, 3]``: two views per image.

    The views of image i are rows 2i and 2i+1, so any even split of the batch (one per replica)
    keeps every positive pair together. Each view independently: random resized crop (one
    batched ``crop_and_resize``, bilinear), a random dihedral transform, HED jitter, contrast
    and brightness, random blur. Deterministic given ``seed`` (shape [2] integer).
    """
    n = 2 * tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    boxes = _crop_boxes(n, seeds[0], crop_scale, crop_ratio)
    source = tf.repeat(tf.range(tf.shape(images)[0]), 2)
    x = tf.image.crop_and_resize(images, boxes, source, [out_size, out_size])  # float32
    x = random_dihedral(x, seeds[1], tf.constant(dihedral_table(out_size)))
    if hed_scale or hed_shift:
        x = hed_jitter(x, seeds[2], hed_scale, hed_shift)
    x = _intensity_jitter(x, seeds[3], brightness, contrast)
    x = _random_blur(x, seeds[4], blur_prob, blur_sigma)
    return tf.cast(tf.clip_by_value(x + 0.5, 0.0, 255.0), tf.uint8)  # +0.5: the cast rounds
