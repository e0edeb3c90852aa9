"""Tests of the offline data sets in models/data (no network, tiny sizes)."""

import math
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.data.dataset import Dataset, cubic_upsampling_matrix, train_test_split
from models.data.scenes import synthetic_scenes
from models.data.shepp_logan import phantoms
from models.data.skimage_samples import SAMPLE_IMAGES, _load, sample_image
from models.data.sklearn_digits import DIGITS_THRESHOLD, NUM_DIGITS, digits

EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def check_dataset(ds, n, size, channels, *, labels):
    assert isinstance(ds, Dataset)
    assert ds.images.shape == (n, size, size, channels) and ds.images.dtype == jnp.float32
    assert ds.masks.shape == (n, size, size, 1) and ds.masks.dtype == jnp.float32
    images, masks = np.asarray(ds.images), np.asarray(ds.masks)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(masks)) <= {0.0, 1.0}
    if labels:
        assert ds.labels.shape == (n,) and ds.labels.dtype == jnp.int32
    else:
        assert ds.labels is None


def inside_outside_means(ds):
    images, masks = np.asarray(ds.images), np.asarray(ds.masks)[..., 0] > 0
    return images[masks].mean(axis=0), images[~masks].mean(axis=0)


# ---------------------------------------------------------------- synthetic scenes


def test_scenes_shapes_ranges_and_contrast():
    ds = synthetic_scenes(jax.random.key(0), 64, size=16, channels=3, max_shapes=2)
    check_dataset(ds, 64, 16, 3, labels=False)
    inside, outside = inside_outside_means(ds)  # per channel
    assert np.all(inside > 0.65) and np.all(outside < 0.4) and np.all(inside - outside > 0.3)
    fractions = np.asarray(ds.masks).mean(axis=(1, 2, 3))
    assert fractions.min() >= 0.02  # every scene holds a shape that is not tiny
    # not separable by exact value: intensities vary inside and outside the shapes
    images, masks = np.asarray(ds.images)[..., 0], np.asarray(ds.masks)[..., 0] > 0
    assert images[masks].std() > 0.05 and images[~masks].std() > 0.05


def test_scenes_deterministic_from_key():
    a = synthetic_scenes(jax.random.key(1), 8)
    b = synthetic_scenes(jax.random.key(1), 8)
    c = synthetic_scenes(jax.random.key(2), 8)
    check_dataset(a, 8, 32, 1, labels=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, c.masks) and not np.allclose(a.images, c.images)
    legacy = synthetic_scenes(jax.random.PRNGKey(1), 8)  # raw uint32 keys are accepted too
    np.testing.assert_array_equal(legacy.images, a.images)


def test_scenes_shape_count_respects_max_shapes():
    # one shape per scene: its mask is a single connected blob
    from scipy import ndimage

    ds = synthetic_scenes(jax.random.key(3), 20, size=32, max_shapes=1)
    for mask in np.asarray(ds.masks)[..., 0]:
        assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 1


# ---------------------------------------------------------------- digits


def sklearn_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target


def test_digits_size8_are_sklearns_images_with_their_labels():
    ref_images, ref_labels = sklearn_digits()
    ds = digits(jax.random.key(0), size=8)
    check_dataset(ds, NUM_DIGITS, 8, 1, labels=True)
    images = np.asarray(ds.images)[..., 0].reshape(NUM_DIGITS, 64)
    ref = ref_images.reshape(NUM_DIGITS, 64)
    index = {row.tobytes(): i for i, row in enumerate(ref)}  # sklearn's 1797 images are distinct
    assert len(index) == NUM_DIGITS
    matches = np.array([index[row.tobytes()] for row in images])  # KeyError: not a sklearn image
    assert np.sort(matches).tolist() == list(range(NUM_DIGITS))  # a permutation of all of them
    np.testing.assert_array_equal(np.asarray(ds.labels), ref_labels[matches])
    assert not np.array_equal(matches, np.arange(NUM_DIGITS))  # the key really shuffles


def test_digits_resize_mask_and_determinism():
    a = digits(jax.random.key(7), size=16, n=40)
    b = digits(jax.random.key(7), size=16, n=40)
    c = digits(jax.random.key(8), size=16, n=40)
    check_dataset(a, 40, 16, 1, labels=True)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    np.testing.assert_array_equal(a.masks, (a.images > DIGITS_THRESHOLD).astype(np.float32))
    inside, outside = inside_outside_means(a)
    assert inside[0] > 0.7 and outside[0] < 0.2
    assert set(np.asarray(a.labels).tolist()) <= set(range(10))
    # the first n after the shuffle: a prefix of the full shuffled set
    full = digits(jax.random.key(7), size=16)
    np.testing.assert_array_equal(full.images[:40], a.images)


def test_digits_upsampling_is_bicubic():
    """Away from the border the matrix resize equals jax.image.resize's bicubic."""
    x = np.random.default_rng(0).uniform(size=(8, 8)).astype(np.float32)
    for size in (16, 32):
        m = cubic_upsampling_matrix(8, size)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=4 * EPS64)  # 4 float64 taps
        ours = m @ x @ m.T
        ref = np.asarray(jax.image.resize(jnp.asarray(x), (size, size), method="cubic"))
        border = 2 * size // 8  # outputs whose four taps all lie inside the input
        inner = slice(border, size - border)
        # jax in float32: 4 taps per axis with float32 weights, two passes: <= 16 u S^2 max|x|
        # (u = eps32 / 2, S the largest sum of |weights| per output, ~1.2)
        s = np.abs(m).sum(axis=1).max()
        atol = 8 * EPS32 * s**2 * np.abs(x).max()
        np.testing.assert_allclose(ours[inner, inner], ref[inner, inner], rtol=0, atol=atol)


# ---------------------------------------------------------------- phantoms


def test_phantoms_body_mask():
    ds = phantoms(jax.random.key(0), 12, size=32)
    check_dataset(ds, 12, 32, 1, labels=False)
    images, masks = np.asarray(ds.images)[..., 0], np.asarray(ds.masks)[..., 0]
    assert np.all(images[masks == 0] == 0.0)  # air outside the body
    assert np.all(images.max(axis=(1, 2)) > 0.9)  # the skull
    # body = ellipse with semi-axes 0.69 s_x, 0.92 s_y (s in [0.8, 1]) in the square [-1, 1]^2
    area = masks.mean(axis=(1, 2)) * 4.0
    lo, hi = math.pi * 0.69 * 0.92 * 0.8**2, math.pi * 0.69 * 0.92
    assert np.all(area > 0.95 * lo) and np.all(area < 1.05 * hi)
    for mask in masks:  # an ellipse: convex, so every row and column is one interval
        for line in (*mask, *mask.T):
            on = np.flatnonzero(line)
            assert on.size == 0 or on[-1] - on[0] + 1 == on.size
    a = phantoms(jax.random.key(0), 12, size=32)
    np.testing.assert_array_equal(a.images, ds.images)
    assert not np.array_equal(phantoms(jax.random.key(1), 12, size=32).images, ds.images)


# ---------------------------------------------------------------- sample images


def test_sample_images_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    _load.cache_clear()
    for name in SAMPLE_IMAGES:
        image = sample_image(name, size=24)
        assert image.shape == (24, 24, 1) and image.dtype == jnp.float32, name
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, name
        assert float(image.max()) > float(image.min()), name


def test_sample_image_values():
    import skimage.data

    camera = sample_image("camera")
    assert camera.shape == (512, 512, 1)
    # uint8 / 255 in float32: one or two roundings of a value <= 1
    np.testing.assert_allclose(camera[..., 0], skimage.data.camera() / 255.0, rtol=0, atol=EPS32)
    phantom = sample_image("phantom", size=64)
    assert phantom.shape == (64, 64, 1)
    assert abs(float(phantom.mean()) - float(skimage.data.shepp_logan_phantom().mean())) < 0.02


# ---------------------------------------------------------------- split and container


def test_train_test_split():
    ds = digits(jax.random.key(0), size=8, n=10)
    train, test = train_test_split(ds)
    assert (train.num_examples, test.num_examples) == (8, 2)
    np.testing.assert_array_equal(np.concatenate([train.images, test.images]), ds.images)
    np.testing.assert_array_equal(np.concatenate([train.labels, test.labels]), ds.labels)
    k_train, k_test = train_test_split(ds, test_fraction=0.5, key=jax.random.key(4))
    assert (k_train.num_examples, k_test.num_examples) == (5, 5)
    rows = lambda d: sorted(np.asarray(d.images).reshape(d.num_examples, -1).tolist())  # noqa: E731
    assert rows(k_test) != rows(test)  # the key changes which samples are held out
    assert sorted(rows(k_train) + rows(k_test)) == rows(ds)
    s_train, s_test = train_test_split(synthetic_scenes(jax.random.key(0), 3, size=16))
    assert s_train.labels is None and s_test.labels is None and s_test.num_examples == 1
    sliced = jax.tree.map(lambda a: a[:2], ds)  # a pytree
    np.testing.assert_array_equal(sliced.images, ds.take(slice(0, 2)).images)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda k: digits(k, size=7), ValueError, "size.*>= 8.*7"),
        (lambda k: digits(k, n=0), ValueError, "n.*>= 1.*0"),
        (lambda k: digits(k, n=NUM_DIGITS + 1), ValueError, "n.*<= 1797.*1798"),
        (lambda k: digits(k, n=2.5), TypeError, "n must be an integer.*2.5"),
        (lambda k: synthetic_scenes(k, 0), ValueError, "n.*>= 1.*0"),
        (lambda k: synthetic_scenes(k, 4, size=8), ValueError, "size.*>= 16.*8"),
        (lambda k: synthetic_scenes(k, 4, channels=0), ValueError, "channels.*>= 1.*0"),
        (lambda k: synthetic_scenes(k, 4, max_shapes=0), ValueError, "max_shapes.*>= 1.*0"),
        (lambda k: synthetic_scenes(123, 4), TypeError, "PRNG key"),
        (lambda k: phantoms(k, -1), ValueError, "n.*>= 1.*-1"),
        (lambda k: phantoms(k, 2, size=15), ValueError, "size.*>= 16.*15"),
        (lambda k: sample_image("lena"), ValueError, "'lena'.*camera.*phantom"),
        (lambda k: sample_image("camera", size=0), ValueError, "size.*>= 1.*0"),
        (
            lambda k: train_test_split(phantoms(k, 2, size=16), test_fraction=1.0),
            ValueError,
            "test_fraction.*1.0",
        ),
        (lambda k: train_test_split(phantoms(k, 1, size=16)), ValueError, "1 sample"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call(jax.random.key(0))
