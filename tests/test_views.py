"""SimCLR views: shapes, pairing, determinism, and the augmentations reducing to what they should."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from quiltflow.models.pipeline import dihedral_table
from quiltflow.models.views import RGB_FROM_HED, hed_jitter, simclr_views

S = 32
B = 6
IDENTITY = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "hed_scale": 0.0,
    "hed_shift": 0.0,
    "brightness": 0.0,
    "contrast": (1.0, 1.0),
    "blur_prob": 0.0,
}


@pytest.fixture(scope="module")
def images() -> tf.Tensor:
    """Smooth H&E-like colour fields plus grain: every crop and transform changes the pixels."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 1, (B, 4, 4, 3)).astype(np.float32)
    smooth = tf.image.resize(low, [S, S], method="bicubic").numpy()
    x = smooth * np.array([90, 60, 70], np.float32) + np.array([140, 80, 150], np.float32)
    x += rng.normal(0, 8, (B, S, S, 3))
    return tf.constant(np.clip(x, 0, 255).astype(np.uint8))


def seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def test_shape_dtype_and_determinism(images):
    views = simclr_views(images, seed(1), out_size=24)
    assert views.dtype == tf.uint8 and views.shape == (2 * B, 24, 24, 3)
    np.testing.assert_array_equal(views.numpy(), simclr_views(images, seed(1), out_size=24).numpy())
    assert not np.array_equal(views.numpy(), simclr_views(images, seed(2), out_size=24).numpy())
    assert not np.array_equal(views.numpy(), simclr_views(images, seed(1, 1), out_size=24).numpy())


def test_the_two_views_of_an_image_differ(images):
    views = simclr_views(images, seed(3), out_size=S).numpy().astype(np.float32)
    for i in range(B):
        assert np.abs(views[2 * i] - views[2 * i + 1]).mean() > 1.0


def test_views_are_adjacent_pairs_of_one_source(images):
    """Rows 2i and 2i+1 come from image i: with only dihedral transforms left, each matches a
    transform of image i and of no other image."""
    views = simclr_views(images, seed(4), out_size=S, **IDENTITY).numpy().reshape(2 * B, -1, 3)
    table = dihedral_table(S)
    pixels = images.numpy().reshape(B, -1, 3)
    transforms = set()
    for row, view in enumerate(views):
        matches = [(j, t) for j in range(B) for t in range(8) if np.array_equal(pixels[j][table[t]], view)]
        assert [j for j, _ in matches] == [row // 2], (row, matches)
        transforms.add(matches[0][1])
    assert len(transforms) >= 4  # random transforms, not one fixed


def test_full_crop_at_the_stored_size_is_exact(images):
    """crop_and_resize with the whole image at its own size copies pixels (no interpolation)."""
    crops = tf.image.crop_and_resize(images, [[0.0, 0.0, 1.0, 1.0]] * B, tf.range(B), [S, S])
    np.testing.assert_array_equal(crops.numpy(), images.numpy().astype(np.float32))


def test_hed_jitter_of_zero_strength_is_identity(images):
    x = tf.cast(images, tf.float32)
    out = hed_jitter(x, seed(5), scale=0.0, shift=0.0).numpy()
    np.testing.assert_allclose(out, x.numpy(), atol=1e-2)


def test_hed_jitter_scales_stains_not_hue_at_random(images):
    """A pure haematoxylin-coloured image stays on the haematoxylin OD direction."""
    od = 0.8 * RGB_FROM_HED[0]  # OD of haematoxylin only
    pixel = 256.0 * np.exp(-od) - 1.0
    x = tf.constant(np.broadcast_to(pixel, (4, 8, 8, 3)).astype(np.float32))
    out = hed_jitter(x, seed(6), scale=0.3, shift=0.0).numpy()[:, 0, 0]
    out_od = -np.log((out + 1.0) / 256.0)
    cos = out_od @ RGB_FROM_HED[0] / np.linalg.norm(out_od, axis=1) / np.linalg.norm(RGB_FROM_HED[0])
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    assert np.ptp(np.linalg.norm(out_od, axis=1)) > 0.01  # the amount changed, per image


def test_default_views_stay_close_in_colour(images):
    """Light jitter: a view's mean colour stays within ~25 grey levels of its source's."""
    views = simclr_views(images, seed(7), out_size=S).numpy().astype(np.float32)
    source = np.repeat(images.numpy().astype(np.float32), 2, axis=0)
    gap = np.abs(views.mean(axis=(1, 2)) - source.mean(axis=(1, 2)))
    assert gap.max() < 25, gap.max()


def test_works_inside_tf_data_with_a_dynamic_batch(images):
    ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    out = [v.shape[0] for v in tf.data.Dataset.zip((ds, seeds)).map(lambda x, s: simclr_views(x, s, out_size=16))]
    assert out == [8, 4]


def test_blur_keeps_flat_images_flat_and_softens_edges():
    from quiltflow.models.views import _blur_matrix

    band = _blur_matrix(S, 1.0)
    np.testing.assert_allclose(band.sum(axis=1), 1.0, atol=1e-6)
    step = np.where(np.arange(S) < S // 2, 0.0, 255.0)
    blurred = band @ step
    assert 0 < blurred[S // 2 - 1] < 255 and blurred[0] == 0 and blurred[-1] == pytest.approx(255)
