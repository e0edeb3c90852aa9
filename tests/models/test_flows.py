"""RealNVP flows: exact inverses, log-dets equal to the dense Jacobian's, clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.flows import ActNorm, AffineCoupling, Flow

SHAPES = [(2, 6, 6, 1), (2, 4, 4, 2)]
EPS32 = float(np.finfo(np.float32).eps)


def _normal(seed: int, shape, std: float = 1.0):
    """Host-side draws (numpy): no XLA random kernel to compile per shape."""
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, std, shape), jnp.float32)


def _perturb_coupling(coupling: AffineCoupling, seed: int) -> None:
    """Give the zero-initialised last conv (and the scale) small random values."""
    out = coupling.out
    out.kernel[...] = _normal(seed, out.kernel.shape, 0.1)
    out.bias[...] = _normal(seed + 1000, out.bias.shape, 0.1)
    coupling.scale[...] = 1.0 + jnp.abs(_normal(seed + 2000, coupling.scale.shape, 0.3))


def _perturb_actnorm(actnorm: ActNorm, seed: int) -> None:
    actnorm.bias[...] = _normal(seed, actnorm.bias.shape)
    actnorm.log_scale[...] = _normal(seed + 1000, actnorm.log_scale.shape, 0.3)


def _make(kind: str, channels: int, seed: int = 0):
    """A non-trivial layer of the given kind (random, non-zero coupling weights)."""
    rngs = nnx.Rngs(seed)
    if kind == "coupling":
        layer = AffineCoupling(channels, 8, seed % 2, rngs=rngs)
        _perturb_coupling(layer, seed)
    elif kind == "actnorm":
        layer = ActNorm(channels, rngs=rngs)
        _perturb_actnorm(layer, seed)
    else:
        layer = Flow(channels, hidden=8, couplings=3, rngs=rngs)
        for i, sub in enumerate(layer.layers):
            (_perturb_coupling if isinstance(sub, AffineCoupling) else _perturb_actnorm)(
                sub, seed + 10 + i
            )
    return layer


def _x(shape, seed=1):
    return _normal(seed + 5000, shape)


def _jacobian(fn, x_one):
    """The (n, n) Jacobian of ``fn`` at one sample ``x_one`` (shape (1, h, w, c)), via jacfwd."""
    n = x_one.size
    jac = jax.jacfwd(lambda v: fn(v.reshape(x_one.shape)).reshape(-1))(x_one.reshape(-1))
    return jac.reshape(n, n)


def _dense_log_det(fn, x_one):
    """log|det J| of ``fn`` at one sample (float32 slogdet) and the error bound of a float32
    log-determinant: the LU's backward error n u |J| (u = eps32 / 2) moves it by <= n u
    sum |J^-1|^T |J| (first order); the flows' n-term sums of log-scales err as much."""
    jac = _jacobian(fn, x_one)
    sign, logabs = jnp.linalg.slogdet(jac)
    assert sign != 0
    j = np.asarray(jac, np.float64)
    skeel = float(np.sum(np.abs(np.linalg.inv(j)).T * np.abs(j)))
    return logabs, 2 * j.shape[0] * EPS32 * skeel


def _round_trip_bound(layer, fn, x_in, x_out):
    """Error bound of a float32 pass through ``layer`` and back, ending with ``fn`` at x_in:
    each of its L layers rounds <= 6 times (u each) going and coming back (the coupling nets
    see the same masked input both ways, so their rounding cancels), and those errors reach
    the output through fn's Jacobian: 3 L eps32 max|activation| max_b ||J_fn||_inf."""
    n_layers = len(layer.layers) if isinstance(layer, Flow) else 1
    size = max(float(jnp.max(jnp.abs(x_in))), float(jnp.max(jnp.abs(x_out))))
    lip = max(
        float(jnp.max(jnp.sum(jnp.abs(_jacobian(fn, x_in[b : b + 1])), axis=1)))
        for b in range(x_in.shape[0])
    )
    return 3 * n_layers * EPS32 * size * lip


KINDS = ["coupling", "actnorm", "flow"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_both_ways(kind, shape):
    layer = _make(kind, shape[-1])
    x = _x(shape)
    y = layer.forward(x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2  # non-trivial map
    bound = _round_trip_bound(layer, layer.inverse, y, x)  # measured <= 0.25 of it
    np.testing.assert_allclose(layer.inverse(y), x, rtol=0, atol=bound)
    x_in = layer.inverse(x)
    bound = _round_trip_bound(layer, layer.forward, x_in, x)
    np.testing.assert_allclose(layer.forward(x_in), x, rtol=0, atol=bound)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_log_det_matches_dense_jacobian_and_inverse_is_its_negative(kind, shape):
    layer = _make(kind, shape[-1], seed=3)
    x = _x(shape, seed=4)
    y, logdet = layer.forward_and_log_det(x)
    assert logdet.shape == (shape[0],)
    x_back, inv_logdet = layer.inverse_and_log_det(y)
    for b in range(shape[0]):
        dense, bound = _dense_log_det(layer.forward, x[b : b + 1])
        np.testing.assert_allclose(logdet[b], dense, rtol=0, atol=bound)
        dense_inv, bound_inv = _dense_log_det(layer.inverse, y[b : b + 1])
        np.testing.assert_allclose(dense_inv, -dense, rtol=0, atol=bound + bound_inv)
        np.testing.assert_allclose(inv_logdet[b], dense_inv, rtol=0, atol=bound_inv)
    if kind != "flow":  # the same log-scales from the same masked input, negated: exact
        np.testing.assert_array_equal(inv_logdet, -logdet)
    assert float(jnp.max(jnp.abs(logdet))) > 1e-2


def test_coupling_leaves_masked_entries_unchanged():
    layer = _make("coupling", 2, seed=0)  # parity 0
    x = _x((2, 4, 4, 2))
    y = layer.forward(x)
    m = layer.mask(4, 4)
    assert m.shape == (4, 4, 1) and float(m[0, 0, 0]) == 0.0 and float(m[0, 1, 0]) == 1.0
    np.testing.assert_array_equal(m * y, m * x)


def test_fresh_flow_is_identity():
    flow = Flow(2, hidden=8, couplings=4, rngs=nnx.Rngs(0))
    assert len(flow.layers) == 8
    assert [c.parity for c in flow.layers if isinstance(c, AffineCoupling)] == [0, 1, 0, 1]
    x = _x((2, 4, 4, 2))
    y, logdet = flow.forward_and_log_det(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(logdet, jnp.zeros(2))
    assert len(Flow(1, couplings=3, actnorm=False, rngs=nnx.Rngs(0)).layers) == 3


def test_log_prob_matches_direct_computation():
    flow = _make("flow", 1, seed=5)
    x = _x((2, 6, 6, 1), seed=6)
    z, logdet = flow.forward_and_log_det(x)
    zf = np.asarray(z, np.float64).reshape(2, -1)
    expected = (
        -0.5 * (zf**2).sum(1) - 0.5 * zf.shape[1] * math.log(2 * math.pi) + np.asarray(logdet)
    )
    lp = flow.log_prob(x)
    assert lp.shape == (2,)
    # float32: an n-term sum of squares (n u relative), the constant and logdet added (2 u),
    # relative to the sum of the three magnitudes
    size = 0.5 * (zf**2).sum(1) + 0.5 * zf.shape[1] * math.log(2 * math.pi) + np.abs(logdet)
    atol = (zf.shape[1] + 4) * EPS32 / 2 * float(size.max())
    np.testing.assert_allclose(lp, expected, rtol=0, atol=atol)
    # change of variables at one sample, against the dense Jacobian
    dense, bound = _dense_log_det(flow.forward, x[:1])
    np.testing.assert_allclose(lp[0], expected[0] - logdet[0] + dense, rtol=0, atol=atol + bound)


def test_gradient_through_forward_is_finite_and_nonzero():
    flow = _make("flow", 2, seed=7)
    x = _x((2, 4, 4, 2), seed=8)
    g = jax.grad(lambda v: jnp.sum(flow.forward(v) ** 2) - jnp.sum(flow.log_prob(v)))(x)
    assert g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
    # and with respect to the parameters
    grads = nnx.grad(lambda m: -jnp.mean(m.log_prob(x)))(flow)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def test_jit_via_split_merge_matches_eager():
    flow = _make("flow", 1, seed=9)
    graphdef, params = nnx.split(flow)

    @jax.jit
    def fwd(params, x):
        return nnx.merge(graphdef, params).forward_and_log_det(x)

    @jax.jit
    def inv(params, y):
        return nnx.merge(graphdef, params).inverse_and_log_det(y)

    x = _x((2, 6, 6, 1), seed=10)
    y, logdet = fwd(params, x)
    y_eager, logdet_eager = flow.forward_and_log_det(x)
    # fused vs op by op: each layer's elementwise ops may round differently, carried to y
    # through the forward Jacobian (the round-trip model; measured 0.4 % of it)
    bound = _round_trip_bound(flow, flow.forward, x, y)
    np.testing.assert_allclose(y, y_eager, rtol=0, atol=bound)
    ld_bound = max(_dense_log_det(flow.forward, x[b : b + 1])[1] for b in range(2))
    np.testing.assert_allclose(logdet, logdet_eager, rtol=0, atol=ld_bound)  # its resolution
    x_back, inv_logdet = inv(params, y)
    np.testing.assert_allclose(x_back, x, rtol=0, atol=_round_trip_bound(flow, flow.inverse, y, x))
    np.testing.assert_allclose(inv_logdet, -logdet, rtol=0, atol=2 * ld_bound)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "bad, error, words",
    [
        (np.zeros((6, 6, 1), np.float32), ValueError, "rank 4"),
        (np.zeros((2, 6, 6, 3), np.float32), ValueError, "1 channels"),
        (np.zeros((2, 6, 6, 1), np.int32), TypeError, "floating point"),
        ([[0.0]], TypeError, "must be an array"),
    ],
)
def test_bad_inputs_raise_with_message(kind, bad, error, words):
    layer = _make(kind, 1)
    for method in (layer.forward_and_log_det, layer.inverse_and_log_det):
        with pytest.raises(error, match=words):
            method(bad)
    if kind == "flow":
        with pytest.raises(error, match=words):
            layer.log_prob(bad)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="channels"):
        Flow(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="couplings"):
        Flow(1, couplings=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="parity"):
        AffineCoupling(1, 4, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden"):
        AffineCoupling(1, 0, 0, rngs=nnx.Rngs(0))
