"""Each pure layer against its jax.lax reference: values and input-gradients to 1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers

DN = ("NHWC", "HWIO", "NHWC")
TOL = dict(rtol=1e-5, atol=1e-5)


def _rand(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _input_grad(f, x, seed=99):
    """Gradient of <f(x), v> w.r.t. x for a fixed random cotangent v."""
    v = _rand(seed, jax.eval_shape(f, x).shape)
    return jax.grad(lambda x: jnp.sum(f(x) * v))(x)


def _assert_same(f, ref, x):
    np.testing.assert_allclose(f(x), ref(x), **TOL)
    np.testing.assert_allclose(_input_grad(f, x), _input_grad(ref, x), **TOL)
    np.testing.assert_allclose(jax.jit(f)(x), ref(x), **TOL)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_matches_lax(stride, padding):
    x, k, b = _rand(0, (2, 8, 8, 3)), _rand(1, (3, 3, 3, 5)), _rand(2, (5,))

    def ref(x):
        return (
            jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=DN) + b
        )

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

    fast = lambda x, k=k: layers.conv2d(x, k, b)  # noqa: E731
    _assert_same(fast, ref, x)
    # kernel gradients (training) and forward-mode derivatives (Jacobian analysis) agree too
    v = _rand(13, (3, 7, 6, c_out))
    grad_k = [jax.grad(lambda k, f=f: jnp.sum(f(x, k) * v))(k) for f in (fast, ref)]
    np.testing.assert_allclose(grad_k[0], grad_k[1], **TOL)
    dx = _rand(14, x.shape)
    tangents = [jax.jvp(f, (x,), (dx,))[1] for f in (fast, ref)]
    np.testing.assert_allclose(tangents[0], tangents[1], **TOL)


@pytest.mark.parametrize("ksize,stride", [(2, 2), (3, 3), (3, 2)])
def test_conv_transpose2d_matches_lax(ksize, stride):
    x, k, b = _rand(0, (2, 4, 6, 6)), _rand(1, (ksize, ksize, 6, 4)), _rand(2, (4,))
    padding = "VALID" if ksize == stride else "SAME"

    def ref(x):
        return jax.lax.conv_transpose(x, k, (stride, stride), padding, dimension_numbers=DN) + b

    f = lambda x: layers.conv_transpose2d(x, k, b, stride=stride)  # noqa: E731
    assert f(x).shape == (2, 4 * stride, 6 * stride, 4)
    _assert_same(f, ref, x)


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool2d_matches_reduce_window(window):
    x = _rand(3, (2, 6, 12, 4))  # continuous random values: no ties

    def ref(x):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, dims, "VALID")

    _assert_same(lambda x: layers.max_pool2d(x, window), ref, x)


@pytest.mark.parametrize("window", [2, 4])
def test_avg_pool2d_matches_reduce_window(window):
    x = _rand(4, (3, 8, 8, 2))

    def ref(x):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, dims, "VALID") / window**2

    _assert_same(lambda x: layers.avg_pool2d(x, window), ref, x)


def test_seed_study_max_pool_example():
    ramp = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(layers.max_pool2d(ramp)[0, ..., 0], [[6, 8], [14, 16]])


def test_pointwise_activations():
    x = jnp.array([-1.0, 2.0, -3.0, 4.0])
    np.testing.assert_array_equal(layers.relu(x), [0, 2, 0, 4])
    np.testing.assert_allclose(layers.leaky_relu(x, 0.1), [-0.1, 2, -0.3, 4], rtol=1e-6)
    np.testing.assert_allclose(layers.sigmoid(x), 1 / (1 + np.exp(-np.asarray(x))), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: layers.relu(x).sum())(x), [0, 1, 0, 1])


def test_upsample_bilinear_is_exact_on_linear_ramps():
    # Half-pixel-centred bilinear interpolation reproduces a linear function away from edges.
    ramp = jnp.arange(8.0)[None, :, None, None] * jnp.ones((1, 8, 8, 1))
    up = layers.upsample_bilinear(ramp, 2)
    assert up.shape == (1, 16, 16, 1)
    centres = (np.arange(16) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[0, 1:-1, 5, 0], centres[1:-1], atol=1e-5)
    # Linear map: the gradient w.r.t. the input is the adjoint, <Ax, v> = <x, A^T v>.
    x, v = _rand(5, (1, 4, 4, 2)), _rand(6, (1, 8, 8, 2))
    atv = jax.grad(lambda x: jnp.sum(layers.upsample_bilinear(x) * v))(x)
    np.testing.assert_allclose(
        jnp.sum(layers.upsample_bilinear(x) * v), jnp.sum(x * atv), rtol=1e-5
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

    np.testing.assert_allclose(
        jax.vmap(one)(x), layers.max_pool2d(layers.conv_transpose2d(x, k)), **TOL
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
