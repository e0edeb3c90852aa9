"""Invertible flows (models.flows): log-dets against the dense Jacobian, forward log-det = minus
inverse log-det, identity at init, jit = eager, Chain = manual composition, event shapes,
clear errors. The 1,000-case round trips are in test_flows_roundtrip.py.

Every bijector and network is built by :func:`make` at small sizes, with its parameters moved
off their initial values (:func:`perturb`) so that no map is trivially the identity.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import nnx

import inversion
from models import flows as F

EPS32 = float(np.finfo(np.float32).eps)

#: name -> (constructor of a small instance for input channels c, the input channels)
BIJECTORS = {
    "affine_checkerboard": (lambda r: F.AffineCoupling(2, 4, 0, rngs=r), 2),
    "affine_channel": (lambda r: F.AffineCoupling(3, 4, 1, mask="channel", rngs=r), 3),
    "additive_channel": (lambda r: F.AdditiveCoupling(2, 4, 0, rngs=r), 2),
    "additive_checkerboard": (
        lambda r: F.AdditiveCoupling(1, 4, 1, mask="checkerboard", rngs=r),
        1,
    ),
    "additive_lipschitz": (lambda r: F.AdditiveCoupling(2, 4, 1, lipschitz=0.5, rngs=r), 2),
    "actnorm": (lambda r: F.ActNorm(2), 2),
    "conv1x1": (lambda r: F.Conv1x1(3, rngs=r), 3),
    "squeeze": (lambda r: F.Squeeze(1), 1),
    "haar": (lambda r: F.HaarDownsampling(2), 2),
    "iresnet_block": (
        lambda r: F.IResNetBlock(1, 4, lipschitz=0.5, iterations=40, log_det_terms=40, rngs=r),
        1,
    ),
    "split": (lambda r: F.SplitChannels(3, 1, F.AffineCoupling(2, 4, 0, rngs=r)), 3),
    "inverse_squeeze": (lambda r: F.Inverse(F.Squeeze(1)), 4),
    "chain": (
        lambda r: F.Chain([F.ActNorm(1), F.Squeeze(1), F.Conv1x1(4, rngs=r), F.ActNorm(4)]),
        1,
    ),
}
#: The networks at tiny widths (two levels: input sizes divisible by 4).
NETWORKS = {
    "Flow": lambda r: F.Flow(1, hidden=4, couplings=3, rngs=r),
    "Glow": lambda r: F.Glow(1, hidden=4, levels=2, depth=1, rngs=r),
    "IRevNet": lambda r: F.IRevNet(1, hidden=4, levels=2, depth=2, rngs=r),
    "IResNet": lambda r: F.IResNet(
        1, hidden=4, blocks=2, lipschitz=0.5, iterations=40, log_det_terms=40, rngs=r
    ),
    "InvertibleUNet": lambda r: F.InvertibleUNet(1, hidden=4, levels=2, depth=1, rngs=r),
    # the affine-coupling variants (the defaults are additive)
    "Glow_affine": lambda r: F.Glow(1, hidden=4, levels=2, depth=1, coupling="affine", rngs=r),
    "InvertibleUNet_affine": lambda r: F.InvertibleUNet(
        1, hidden=4, levels=2, depth=1, coupling="affine", rngs=r
    ),
}
ALL = {**{k: v for k, (v, _) in BIJECTORS.items()}, **NETWORKS}
CHANNELS = {**{k: c for k, (_, c) in BIJECTORS.items()}, **dict.fromkeys(NETWORKS, 1)}


def normal(seed: int, shape, std: float = 1.0):
    """Host-side draws (numpy): no XLA random kernel to compile per shape."""
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, std, shape), jnp.float32)


def perturb(module, seed: int, std: float = 0.2):
    """Add ``std``·N(0, 1) to every trainable parameter (the zero-initialised last convs too)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    leaves = [a + normal(seed + i, a.shape, std) for i, a in enumerate(leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)


def make(name: str, seed: int = 0, std: float = 0.2):
    """A non-trivial instance of bijector or network ``name``."""
    return perturb(ALL[name](nnx.Rngs(seed)), seed + 100, std)


def x_for(name: str, size: int = 4, batch: int = 2, seed: int = 1):
    return normal(seed + 5000, (batch, size, size, CHANNELS[name]))


def jacobian(fn, x_one):
    """The dense Jacobian of ``fn`` (image -> image) at one image, flattened (m, n)."""
    flat = jax.jit(jax.jacfwd(lambda v: fn(v.reshape(x_one.shape)).reshape(-1)))
    return flat(x_one.reshape(-1)).reshape(-1, x_one.size)


def dense_log_det(fn, x_one):
    """``log|det J|`` of ``fn`` at one image (float32 slogdet) and its error bound: the LU's
    backward error n u |J| (u = eps32 / 2) moves it by <= n u sum |J^-1|^T |J| (first order);
    the bijectors' n-term sums of log-scales err as much."""
    jac = jacobian(fn, x_one)
    sign, logabs = jnp.linalg.slogdet(jac)
    assert sign != 0
    j = np.asarray(jac, np.float64)
    skeel = float(np.sum(np.abs(np.linalg.inv(j)).T * np.abs(j)))
    return float(logabs), 2 * j.shape[0] * EPS32 * skeel


def truncation(module, d: int) -> float:
    """The i-ResNet power series' truncation bound d L^{n+1}/((n+1)(1-L)), summed over blocks
    (0 for every other bijector: their log-dets are closed forms)."""
    blocks = [module] if isinstance(module, F.IResNetBlock) else []
    if isinstance(module, F.IResNet):
        blocks = module.blocks
    total = 0.0
    for b in blocks:
        lip, n = float(b.lipschitz_bound()), b.log_det_terms
        total += d * lip ** (n + 1) / ((n + 1) * (1 - lip))
    return total


@pytest.mark.parametrize("name", list(ALL))
def test_log_det_matches_dense_jacobian_and_inverse_is_its_negative(name):
    module = make(name, seed=3)
    x = x_for(name, seed=4)
    y, logdet = module.forward_and_log_det(x)
    x_back, inv_logdet = module.inverse_and_log_det(y)
    assert logdet.shape == inv_logdet.shape == (2,)
    for b in range(1):  # one image: the batch axis is checked in the event-shape test
        dense, bound = dense_log_det(module.forward, x[b])
        bound += truncation(module, x[b].size)
        np.testing.assert_allclose(logdet[b], dense, rtol=0, atol=bound)
        dense_inv, bound_inv = dense_log_det(module.inverse, y[b])
        bound_inv += truncation(module, x[b].size)
        np.testing.assert_allclose(inv_logdet[b], dense_inv, rtol=0, atol=bound_inv)
        # forward log-det = - inverse log-det, each within its resolution
        np.testing.assert_allclose(inv_logdet[b], -logdet[b], rtol=0, atol=bound + bound_inv)


@pytest.mark.parametrize(
    "name",
    [
        "affine_checkerboard",
        "affine_channel",
        "additive_channel",
        "additive_checkerboard",
        "actnorm",
        "iresnet_block",
        "Flow",
        "IRevNet",
        "IResNet",
        "InvertibleUNet",
        "InvertibleUNet_affine",
    ],
)
def test_identity_at_init(name):
    """Couplings (last conv zero), ActNorm (zeros), i-ResNet blocks (last conv zero) and the
    networks made of them with cancelling Haar pairs are the identity: exactly, except that a
    Haar forward-and-back pair rounds (the 1/2 factors are exact, the sums round: 2 u |x|)."""
    module = ALL[name](nnx.Rngs(0))
    x = x_for(name, size=8)
    y, logdet = module.forward_and_log_det(x)
    haar = name.startswith(("IRevNet", "InvertibleUNet"))
    atol = 4 * EPS32 * float(jnp.max(jnp.abs(x))) if haar else 0
    np.testing.assert_allclose(y, x, rtol=0, atol=atol)
    np.testing.assert_array_equal(logdet, jnp.zeros(2))


def test_volume_preserving_at_init_where_not_the_identity():
    """Glow and Conv1x1 start from random rotations (log-det 0 up to the rounding of
    sum log|u_ii| over c terms); Squeeze permutes and Haar rotates: norms are kept."""
    x = x_for("Glow", size=8)
    _, logdet = F.Glow(1, hidden=4, levels=2, depth=1, rngs=nnx.Rngs(0)).forward_and_log_det(x)
    assert float(jnp.max(jnp.abs(logdet))) < 64 * 16 * EPS32
    conv = F.Conv1x1(4, rngs=nnx.Rngs(0))
    w = np.asarray(conv.weight(), np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=8 * EPS32)
    np.testing.assert_array_equal(
        F.Conv1x1(3, init="identity", rngs=nnx.Rngs(0)).weight(), np.eye(3)
    )
    for module in (F.Squeeze(2), F.HaarDownsampling(2)):
        x = x_for("haar", size=4)
        y = module.forward(x)
        assert y.shape == (2, 2, 2, 8)
        np.testing.assert_allclose(jnp.linalg.norm(y), jnp.linalg.norm(x), rtol=4 * EPS32)


def test_conv1x1_log_det_is_o_c_and_the_inverse_weight_inverts():
    conv = make("conv1x1", seed=5)
    w = np.asarray(conv.weight(), np.float64)
    _, logdet = conv.forward_and_log_det(x_for("conv1x1", size=4))
    # h w log|det W| (float64 reference); float32: c log-terms plus the product's rounding
    np.testing.assert_allclose(logdet, 16 * np.linalg.slogdet(w)[1], rtol=0, atol=16 * 8 * EPS32)
    np.testing.assert_allclose(
        np.asarray(conv.inverse_weight(), np.float64) @ w,
        np.eye(3),
        atol=16 * EPS32 * np.abs(w).sum(),
    )


def test_haar_matrix_is_orthogonal_and_low_pass_first():
    h = F.haar.HAAR.astype(np.float64)
    np.testing.assert_array_equal(h @ h.T, np.eye(4))
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_array_equal(F.HaarDownsampling(1).forward(x)[0, 0, 0], [2.0, 0, 0, 0])


def test_iresnet_lipschitz_and_a_priori_bound():
    """The certified L_g bounds the Jacobian's spectral norm of g (at random points), and the
    fixed-point error after k steps stays below L_g^k/(1-L_g) ||g(y)|| (down to float32
    rounding of one step, eps32 (||y|| + ||g||)/(1 - L_g), added to the bound)."""
    block = make("iresnet_block", seed=7, std=0.5)
    lip = float(block.lipschitz_bound())
    assert 0 < lip <= 0.5
    x = x_for("iresnet_block", size=6, batch=1, seed=8)
    for seed in range(3):
        point = x_for("iresnet_block", size=6, batch=1, seed=seed)
        jac = jacobian(lambda v: block.residual(v[None])[0], point[0])
        assert float(np.linalg.norm(np.asarray(jac, np.float64), 2)) <= lip * (1 + 1e-5)
    y = block.forward(x)
    norm_y = float(jnp.linalg.norm(y))
    for k in (0, 1, 2, 4, 8, 16, 32):
        err = float(jnp.linalg.norm(block.fixed_point(y, k) - x))
        bound = float(block.inverse_error_bound(y, k)[0])
        assert err <= bound + 4 * EPS32 * 2 * norm_y / (1 - lip), (k, err, bound)


def test_lipschitz_additive_coupling_is_bi_lipschitz():
    """With ``lipschitz = L`` the certified bound of the conditioner is <= L and above its
    Jacobian's spectral norm at random points, so the coupling and its inverse (Jacobians
    [[I, 0], [J_NN, I]] and [[I, 0], [-J_NN, I]]) stretch by at most 1 + L. The parameters
    are moved far enough (std 0.5) that the normalisation is active, not a no-op."""
    coupling = make("additive_lipschitz", seed=21, std=0.5)
    raw = F.AdditiveCoupling(2, 4, 1, rngs=nnx.Rngs(0))
    assert float(F.conditioner.conv_lipschitz_bound(coupling.net.conv2.kernel[...])) > 0.5 ** (
        1 / 3
    )  # the raw kernel breaks the per-conv bound: the normalisation acts
    lip = float(coupling.lipschitz_bound())
    assert 0 < lip <= 0.5 * (1 + 1e-6)
    assert float(raw.lipschitz_bound()) < 1e-12  # unconstrained, zero last conv: NN = 0
    for seed in range(2):
        point = x_for("additive_lipschitz", size=4, batch=1, seed=30 + seed)[0]
        passive = point[..., 1:]  # parity 1: the last channel is passive
        jac_nn = jacobian(lambda v: coupling.net(v[None])[0], passive)
        assert float(np.linalg.norm(np.asarray(jac_nn, np.float64), 2)) <= lip * (1 + 1e-5)
        for fn in (coupling.forward, coupling.inverse):
            jac = np.asarray(jacobian(fn, point), np.float64)
            assert float(np.linalg.norm(jac, 2)) <= (1 + lip) * (1 + 1e-5)


def test_glow_last_coupling_before_a_factor_out_conditions_on_the_factored_channels():
    """Parity 0 passes the first 2c channels (the ones SplitChannels keeps aside) unchanged;
    ``condition_on='continuing'`` flips every parity; the coupling kind follows ``coupling``."""

    def last_couplings(glow):
        level = glow.layers[0]
        kinds = [layer for layer in level.layers if hasattr(layer, "parity")]
        return kinds

    for condition_on, last in (("factored", 0), ("continuing", 1)):
        for depth in (1, 2, 3):
            glow = F.Glow(1, hidden=4, depth=depth, condition_on=condition_on, rngs=nnx.Rngs(0))
            couplings = last_couplings(glow)
            assert len(couplings) == depth and couplings[-1].parity == last
            assert all(isinstance(c, F.AdditiveCoupling) for c in couplings)
    affine = F.Glow(1, hidden=4, coupling="affine", rngs=nnx.Rngs(0))
    assert all(isinstance(c, F.AffineCoupling) for c in last_couplings(affine))
    unet = F.InvertibleUNet(1, hidden=4, depth=2, rngs=nnx.Rngs(0))
    assert [c.parity for c in unet.layers[:2]] == [1, 0]


def test_chain_equals_manual_composition():
    layers = [make("actnorm", 1), make("affine_channel", 2)]
    layers = [F.ActNorm(2), make("affine_checkerboard", 1), make("additive_channel", 2)]
    layers[0] = perturb(layers[0], 9)
    chain = F.Chain(layers)
    x = x_for("actnorm", size=4)
    y, logdet = chain.forward_and_log_det(x)
    manual, total = x, 0.0
    for layer in layers:
        manual, ld = layer.forward_and_log_det(manual)
        total = total + ld
    np.testing.assert_array_equal(y, manual)
    np.testing.assert_array_equal(logdet, total)
    back, inv = chain.inverse_and_log_det(y)
    manual, total = y, 0.0
    for layer in reversed(layers):
        manual, ld = layer.inverse_and_log_det(manual)
        total = total + ld
    np.testing.assert_array_equal(back, manual)
    np.testing.assert_array_equal(inv, total)
    with pytest.raises(ValueError, match="gives 4 channels but layer 1"):
        F.Chain([F.Squeeze(1), F.ActNorm(1)])
    with pytest.raises(ValueError, match="non-empty"):
        F.Chain([])


@pytest.mark.parametrize("name", ["affine_checkerboard", "IRevNet"])
def test_event_shapes_single_image_batch_and_vmap(name):
    """A single image is the batch of one without its batch axis; vmap over single images
    equals the batched call (the same ops per image; vmap may reorder reductions: 4 u)."""
    module = make(name, seed=11)
    x = x_for(name, size=4, batch=3)
    y, logdet = module.forward_and_log_det(x)
    y0, ld0 = module.forward_and_log_det(x[0])
    assert ld0.shape == () and y0.shape == y.shape[1:]
    scale = float(jnp.max(jnp.abs(y)))
    np.testing.assert_allclose(y0, y[0], rtol=0, atol=4 * EPS32 * scale)
    yv = jax.vmap(module.forward)(x)
    np.testing.assert_allclose(yv, y, rtol=0, atol=4 * EPS32 * scale)
    x0 = module.inverse(y0)
    assert x0.shape == x.shape[1:]


def test_inversion_invert_inverts_a_flow_of_one_image():
    from inversion import invert

    flow = make("Flow", seed=12, std=0.05)
    x = jnp.clip(x_for("Flow", size=4, batch=1)[0] * 0.2 + 0.5, 0, 1)
    result = invert(
        flow.forward,
        flow.forward(x),
        x0=jnp.zeros_like(x),
        steps=300,
        solver=inversion.solvers.Optax(optax.adam(0.05)),
    )
    assert result.x.shape == x.shape
    assert float(jnp.max(jnp.abs(result.x - x))) < 0.05  # Adam converging towards the exact one


def test_log_prob_matches_direct_computation():
    flow = make("Glow", seed=5)
    x = x_for("Glow", size=4, seed=6)
    z, logdet = flow.forward_and_log_det(x)
    zf = np.asarray(z, np.float64).reshape(2, -1)
    expected = -0.5 * (zf**2).sum(1) - 0.5 * zf.shape[1] * math.log(2 * math.pi) + logdet
    # float32: an n-term sum of squares (n u relative), the constant and logdet (2 u)
    size = 0.5 * (zf**2).sum(1) + 0.5 * zf.shape[1] * math.log(2 * math.pi) + np.abs(logdet)
    atol = (zf.shape[1] + 4) * EPS32 / 2 * float(size.max())
    np.testing.assert_allclose(flow.log_prob(x), expected, rtol=0, atol=atol)
    assert flow.log_prob(x[0]).shape == ()


def test_data_dependent_actnorm_init():
    x = x_for("actnorm", size=8, batch=4) * 3.0 + 2.0
    actnorm = F.ActNorm(2)
    y = actnorm.initialize(x)
    # mean and std of 256 values per channel in float32: (n u) relative to the data's scale
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=256 * EPS32 * 8)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=256 * EPS32 * 8)
    glow = F.Glow(1, hidden=4, levels=2, depth=1, rngs=nnx.Rngs(0))
    z = glow.initialize(x_for("Glow", size=8, batch=4))
    np.testing.assert_allclose(float(jnp.std(z)), 1.0, atol=1e-4)  # the last ActNorm's output


def test_gradient_through_forward_is_finite_and_nonzero():
    flow = make("InvertibleUNet", seed=7)
    x = x_for("InvertibleUNet", size=4, seed=8)
    g = jax.jit(jax.grad(lambda v: jnp.sum(flow.forward(v) ** 2)))(x)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m.forward(x) ** 2)))(flow)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


class JitEqualsEager(chex.TestCase):
    """Every bijector and network under ``jax.jit`` and eagerly (chex variants). XLA fuses the
    jitted graph, so elementwise ops may round differently: per layer a few u relative to the
    largest activation, carried to y through a Jacobian of moderate norm (these maps stretch by
    at most ~e^1.5 per layer): rtol-free atol = 2^-13 max|y| covers tens of layers."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*ALL)
    def test_jit_equals_eager(self, name):
        module = make(name, seed=13)
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)

        def both(p, x):
            m = nnx.merge(graphdef, p, rest)
            y, ld = m.forward_and_log_det(x)
            return y, ld, m.inverse(y)

        x = x_for(name, size=4, seed=14)
        y, ld, back = self.variant(both)(params, x)
        y_ref, ld_ref = module.forward_and_log_det(x)
        atol = float(jnp.max(jnp.abs(y_ref))) * 2.0**-13
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=atol)
        np.testing.assert_allclose(
            ld, ld_ref, rtol=0, atol=1e-4 * (1 + float(jnp.max(jnp.abs(ld_ref))))
        )
        np.testing.assert_allclose(back, x, rtol=0, atol=float(jnp.max(jnp.abs(x))) * 1e-5)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize(
    "bad, error, words",
    [
        (np.zeros((4, 4), np.float32), ValueError, "rank 3 or a batch"),
        (np.zeros((1, 1, 4, 4, 1), np.float32), ValueError, "rank 3 or a batch"),
        (np.zeros((2, 4, 4, 5), np.float32), ValueError, "channels"),
        (np.zeros((2, 4, 4, 1), np.int32), TypeError, "floating point"),
        ([[0.0]], TypeError, "must be an array"),
    ],
)
def test_bad_inputs_raise_with_message(name, bad, error, words):
    module = ALL[name](nnx.Rngs(0))
    if words == "floating point":
        bad = np.zeros((2, 4, 4, CHANNELS[name]), np.int32)
    for method in (module.forward_and_log_det, module.inverse_and_log_det, module.forward):
        with pytest.raises(error, match=words):
            method(bad)


@pytest.mark.parametrize("name", ["squeeze", "haar", "Glow", "IRevNet", "InvertibleUNet"])
def test_odd_spatial_sizes_are_refused(name):
    module = ALL[name](nnx.Rngs(0))
    size = 6 if name in ("Glow", "IRevNet", "InvertibleUNet") else 5  # 6 halves to 3 (odd)
    bad = np.zeros((1, size, size, CHANNELS[name]), np.float32)
    with pytest.raises(ValueError, match="height and width divisible by"):
        module.forward(bad)
    # the inverse of a squeeze-like map needs its output's size: (3, 3) comes from 6x6
    with pytest.raises(ValueError, match="channels|divisible"):
        module.inverse(np.zeros((1, 3, 3, 1), np.float32))


def test_bad_constructor_arguments():
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match="channels"):
        F.Flow(0, rngs=r)
    with pytest.raises(ValueError, match="couplings"):
        F.Flow(1, couplings=0, rngs=r)
    with pytest.raises(ValueError, match="parity"):
        F.AffineCoupling(1, 4, 2, rngs=r)
    with pytest.raises(ValueError, match="hidden"):
        F.AffineCoupling(1, 0, 0, rngs=r)
    with pytest.raises(ValueError, match="at least 2 channels"):
        F.AffineCoupling(1, 4, 0, mask="channel", rngs=r)
    with pytest.raises(ValueError, match="mask must be"):
        F.AdditiveCoupling(2, 4, 0, mask="stripes", rngs=r)
    with pytest.raises(ValueError, match="lipschitz"):
        F.IResNetBlock(1, 4, lipschitz=1.0, rngs=r)
    with pytest.raises(ValueError, match="init must be"):
        F.Conv1x1(2, init="random", rngs=r)
    with pytest.raises(ValueError, match="remaining channels"):
        F.SplitChannels(4, 2, F.ActNorm(3))
    with pytest.raises(ValueError, match="coupling must be one of"):
        F.Glow(coupling="multiplicative", rngs=r)
    with pytest.raises(ValueError, match="needs coupling='additive'"):
        F.InvertibleUNet(coupling="affine", lipschitz=0.5, rngs=r)
    with pytest.raises(ValueError, match="condition_on must be one of"):
        F.Glow(condition_on="passive", rngs=r)
    with pytest.raises(ValueError, match="lipschitz must be a positive number"):
        F.AdditiveCoupling(2, 4, 0, lipschitz=-1.0, rngs=r)


def test_fixed_point_errors_stay_below_the_banach_bound():
    """An i-ResNet block's iterates from x_0 = y approach x* within L^k/(1-L)·‖g(y)‖ (plus the
    float32 floor) at every k; the error shrinks by about L a step until it stalls there."""
    from models.flows import IResNet, fixed_point_errors

    net = IResNet(1, 2, 1, lipschitz=0.9, rngs=nnx.Rngs(0))
    for block in net.blocks:  # a non-trivial residual (conv2 is zero at init)
        k = block.conv2.kernel
        k[...] = 0.5 * jax.random.normal(jax.random.key(3), k[...].shape)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 1)), jnp.float32)
    rows = fixed_point_errors(net, x, 12)
    assert len(rows) == 1
    for r in rows:  # L_g <= 0.9 up to the float32 rounding of its square-root factors
        assert 0 < r["lipschitz_bound"] <= 0.9 * (1 + 1e-6) and r["below_bound"]
        assert r["error"].shape == r["bound"].shape == (13,)
        assert r["error"][0] > 0 and r["error"][12] <= r["error"][0] * r["lipschitz_bound"] ** 6
    with pytest.raises(TypeError, match="IResNet"):
        fixed_point_errors(net.blocks[0], x, 3)
