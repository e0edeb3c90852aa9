"""Each pure layer against its jax.lax reference: values and input-gradients, bitwise where
the layer runs the same lax ops, else to the float32 rounding of its sums of products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers

DN = ("NHWC", "HWIO", "NHWC")
EPS32 = float(np.finfo(np.float32).eps)


def _rand(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _input_grad(f, x, seed=99, absolute=False):
    """Gradient of <f(x), v> w.r.t. x for a fixed random cotangent v (|v| if absolute)."""
    v = _rand(seed, jax.eval_shape(f, x).shape)
    v = jnp.abs(v) if absolute else v
    return jax.grad(lambda x: jnp.sum(f(x) * v))(x)


def _within(a, b, bound):
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert np.all(err <= bound), f"max err / bound = {np.max(err / np.maximum(bound, 1e-300))}"


def _assert_same(f, ref, x, mag=None, terms=0):
    """f equals ref: value, input-gradient and under jit.

    mag=None: f runs the same lax ops as ref, so they agree bitwise. Otherwise each entry on
    either side is a float32 sum of at most `terms` products plus a bias, within
    (terms + 1) u of |L|(|x|) (u = eps32 / 2; mag applies the layer with |kernel| and |bias|,
    and its input-gradient with |v| gives |L|^T |v|), so |f - ref| <= (terms + 1) eps32 mag.
    """
    if mag is None:
        np.testing.assert_array_equal(f(x), ref(x))
        np.testing.assert_array_equal(_input_grad(f, x), _input_grad(ref, x))
        np.testing.assert_array_equal(jax.jit(f)(x), jax.jit(ref)(x))
        return
    c = (terms + 1) * EPS32
    bound = c * np.asarray(mag(jnp.abs(x)), np.float64)
    _within(f(x), ref(x), bound)
    _within(jax.jit(f)(x), ref(x), bound)
    grad_bound = c * np.asarray(_input_grad(mag, x, absolute=True), np.float64)
    _within(_input_grad(f, x), _input_grad(ref, x), grad_bound)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_matches_lax(stride, padding):
    x, k, b = _rand(0, (2, 8, 8, 3)), _rand(1, (3, 3, 3, 5)), _rand(2, (5,))

    def ref(x):
        return (
            jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=DN) + b
        )

    # ci = 3, co = 5: the generic path, i.e. the same lax convolution: bitwise
    _assert_same(lambda x: layers.conv2d(x, k, b, stride=stride, padding=padding), ref, x)


@pytest.mark.parametrize(
    "c_in,c_out,kshape", [(1, 16, (3, 3)), (32, 1, (3, 3)), (1, 1, (5, 3)), (3, 1, (1, 1))]
)
def test_conv2d_one_channel_fast_path_matches_lax(c_in, c_out, kshape):
    # ci == 1 or co == 1 with odd kernels takes the taps-major matmul path; (2, 3) the lax one.
    x, k = _rand(10, (3, 7, 6, c_in)), _rand(11, (*kshape, c_in, c_out)) / 3
    b = _rand(12, (c_out,))

    def ref(x, k=k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN) + b

    def abs_conv(x, k=k):
        return jax.lax.conv_general_dilated(x, jnp.abs(k), (1, 1), "SAME", dimension_numbers=DN)

    fast = lambda x, k=k: layers.conv2d(x, k, b)  # noqa: E731
    terms = kshape[0] * kshape[1] * max(c_in, c_out)  # products per output or gradient entry
    _assert_same(fast, ref, x, mag=lambda x: abs_conv(x) + jnp.abs(b), terms=terms)
    # kernel gradients (training) and forward-mode derivatives (Jacobian analysis) agree too
    v = _rand(13, (3, 7, 6, c_out))
    grad_k = [jax.grad(lambda k, f=f: jnp.sum(f(x, k) * v))(k) for f in (fast, ref)]
    # a kernel entry's gradient sums one product per output position (3 * 7 * 6 of them)
    mag_k = jnp.abs(jax.grad(lambda k: jnp.sum(abs_conv(jnp.abs(x), k) * jnp.abs(v)))(k))
    _within(grad_k[0], grad_k[1], (x.size // c_in + 1) * EPS32 * np.asarray(mag_k, np.float64))
    dx = _rand(14, x.shape)
    tangents = [jax.jvp(f, (x,), (dx,))[1] for f in (fast, ref)]
    _within(tangents[0], tangents[1], (terms + 1) * EPS32 * np.asarray(abs_conv(jnp.abs(dx))))


@pytest.mark.parametrize("ksize,stride", [(2, 2), (3, 3), (3, 2)])
def test_conv_transpose2d_matches_lax(ksize, stride):
    x, k, b = _rand(0, (2, 4, 6, 6)), _rand(1, (ksize, ksize, 6, 4)), _rand(2, (4,))
    padding = "VALID" if ksize == stride else "SAME"

    def ref(x):
        return jax.lax.conv_transpose(x, k, (stride, stride), padding, dimension_numbers=DN) + b

    f = lambda x: layers.conv_transpose2d(x, k, b, stride=stride)  # noqa: E731
    assert f(x).shape == (2, 4 * stride, 6 * stride, 4)
    if ksize != stride:  # the same lax.conv_transpose: bitwise
        _assert_same(f, ref, x)
        return

    def mag(x):  # kernel size = stride: a matrix product; ci = 6 products per output entry,
        # ksize^2 co per gradient entry
        return jax.lax.conv_transpose(
            x, jnp.abs(k), (stride, stride), padding, dimension_numbers=DN
        ) + jnp.abs(b)

    _assert_same(f, ref, x, mag=mag, terms=ksize * ksize * 6)


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool2d_matches_reduce_window(window):
    x = _rand(3, (2, 6, 12, 4))  # continuous random values: no ties

    def ref(x):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, dims, "VALID")

    # a selection, forward and gradient (v routed to the unique maximum): bitwise
    _assert_same(lambda x: layers.max_pool2d(x, window), ref, x)


@pytest.mark.parametrize("window", [2, 4])
def test_avg_pool2d_matches_reduce_window(window):
    x = _rand(4, (3, 8, 8, 2))

    def ref(x):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, dims, "VALID") / window**2

    # window^2-term sums in another order (ref has positive weights: it is its own |L|)
    _assert_same(lambda x: layers.avg_pool2d(x, window), ref, x, mag=ref, terms=window**2)


def test_seed_study_max_pool_example():
    ramp = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(layers.max_pool2d(ramp)[0, ..., 0], [[6, 8], [14, 16]])


def test_pointwise_activations():
    x = jnp.array([-1.0, 2.0, -3.0, 4.0])
    np.testing.assert_array_equal(layers.relu(x), [0, 2, 0, 4])
    # float32 0.1 and one product: two roundings
    np.testing.assert_allclose(layers.leaky_relu(x, 0.1), [-0.1, 2, -0.3, 4], rtol=EPS32)
    # exp, add, quotient in float32 (exp within 1 ulp): <= 4 u against float64
    expected = 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    np.testing.assert_allclose(layers.sigmoid(x), expected, rtol=2 * EPS32)
    np.testing.assert_array_equal(jax.grad(lambda x: layers.relu(x).sum())(x), [0, 1, 0, 1])


def test_upsample_bilinear_is_exact_on_linear_ramps():
    # Half-pixel-centred bilinear interpolation reproduces a linear function away from edges.
    ramp = jnp.arange(8.0)[None, :, None, None] * jnp.ones((1, 8, 8, 1))
    up = layers.upsample_bilinear(ramp, 2)
    assert up.shape == (1, 16, 16, 1)
    centres = (np.arange(16) + 0.5) / 2 - 0.5
    # each output: two taps per axis with float32 weights, 4 products and sums of |ramp| <= 7
    np.testing.assert_allclose(up[0, 1:-1, 5, 0], centres[1:-1], rtol=0, atol=8 * EPS32 * 7)
    # Linear map: the gradient w.r.t. the input is the adjoint, <Ax, v> = <x, A^T v>.
    x, v = _rand(5, (1, 4, 4, 2)), _rand(6, (1, 8, 8, 2))
    atv = jax.grad(lambda x: jnp.sum(layers.upsample_bilinear(x) * v))(x)
    # both are float32 sums of <= n = 128 products (after 4-tap interpolations) of
    # sum A|x| |v| (weights >= 0): |d| <= (n + 4) u each side
    mag = float(jnp.sum(layers.upsample_bilinear(jnp.abs(x)) * jnp.abs(v)))
    np.testing.assert_allclose(
        jnp.sum(layers.upsample_bilinear(x) * v),
        jnp.sum(x * atv),
        rtol=0,
        atol=(v.size + 4) * EPS32 * mag,
    )


def test_concat_skip():
    a, b = jnp.ones((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 3))
    assert layers.concat_skip(a, b).shape == (1, 4, 4, 5)
    with pytest.raises(ValueError, match="spatial"):
        layers.concat_skip(a, jnp.zeros((1, 2, 2, 3)))


def test_layers_vmap_equals_batch():
    x, k = _rand(7, (4, 8, 8, 3)), _rand(8, (2, 2, 3, 5))

    def one(xi):
        return layers.max_pool2d(layers.conv_transpose2d(xi[None], k))[0]

    # conv_transpose2d's 3-term sums (ci = 3) may round differently by batch size; max
    # pooling moves each error by at most the window's largest
    mag = layers.max_pool2d(
        jax.lax.conv_transpose(jnp.abs(x), jnp.abs(k), (2, 2), "VALID", dimension_numbers=DN)
    )
    _within(
        jax.vmap(one)(x),
        layers.max_pool2d(layers.conv_transpose2d(x, k)),
        4 * EPS32 * np.asarray(mag, np.float64),
    )


def test_bad_input_raises_clear_errors():
    x = jnp.ones((1, 6, 6, 3))
    with pytest.raises(ValueError, match="rank 4"):
        layers.max_pool2d(jnp.ones((6, 6, 3)))
    with pytest.raises(ValueError, match="not divisible"):
        layers.max_pool2d(x, 4)
    with pytest.raises(ValueError, match="input channels"):
        layers.conv2d(x, jnp.ones((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="padding"):
        layers.conv2d(x, jnp.ones((3, 3, 3, 4)), padding="FULL")
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        layers.activation("swishy")
