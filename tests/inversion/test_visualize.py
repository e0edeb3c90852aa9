"""inversion.visualize: closed forms, jit = eager, one compiled program for many channels."""

from __future__ import annotations

import doctest
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inversion
from inversion import solvers, visualize_params, visualize_transforms, visualize_units
from inversion.visualize import channels, directions, positions, units, visualize, weights
from inversion.visualize_transforms import Jitter, Pad, Rotate, Scale, standard

W = np.array([[1.0, -2.0, 0.5, -0.25], [-1.0, 0.3, 2.0, 1.0]], np.float32)


def _linear(x):
    return jnp.asarray(W) @ x


def test_exported():
    assert inversion.visualize is visualize


def test_doctests():
    visualize_module = importlib.import_module("inversion.visualize")  # the name is the function
    for module in (visualize_module, visualize_params, visualize_transforms, visualize_units):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


@pytest.mark.parametrize("goal", ["max", "min"])
def test_linear_units_in_a_box_reach_the_sign_corner(goal):
    # max_{x in [-1,1]^n} w.x is attained at x = sign(w) (min at -sign(w)); the projection onto
    # the box lands exactly on the corner, so the answer is exact, not approximate
    res = visualize(
        _linear,
        units([0, 1], goal=goal),
        shape=(4,),
        param="pixels",
        bounds=(-1.0, 1.0),
        steps=150,
        key=jax.random.key(0),
    )
    sign = 1 if goal == "max" else -1
    np.testing.assert_array_equal(res.images[:, 0], sign * np.sign(W))
    np.testing.assert_allclose(res.score[:, 0], sign * np.abs(W).sum(1), rtol=1e-6)


def test_relu_unit_is_maximised_at_the_same_corner():
    # relu(w.x + b) is non-decreasing in w.x, so its maximum over the box is at sign(w) too;
    # b = 0.5 keeps the unit alive at the start (the box centre plus 0.01 noise)
    w = jnp.asarray(W[0])
    res = visualize(
        lambda x: jax.nn.relu(jnp.array([w @ x + 0.5])),
        units([0]),
        shape=(4,),
        param="pixels",
        bounds=(-1.0, 1.0),
        steps=150,
        key=jax.random.key(1),
        batch=3,
    )
    np.testing.assert_array_equal(res.images[0], np.broadcast_to(np.sign(W[0]), (3, 4)))
    np.testing.assert_allclose(res.score[0], np.abs(W[0]).sum() + 0.5, rtol=1e-6)


def test_shut_down_is_the_projection_onto_the_half_space():
    # min ||x - x0|| s.t. w.x + b <= 0 is x0 - (s0 / ||w||^2) w for s0 = w.x0 + b > 0. The
    # penalty form (units docstring) with margin d and weight mu returns x0 - tau w with
    # tau = mu (s0 + d) / (1 + mu ||w||^2): off the projection by |tau - s0/||w||^2| ||w||.
    w, b = jnp.asarray(W[1]), 0.3
    x0 = jnp.array([0.4, 0.1, 0.5, 0.2])
    s0 = float(w @ x0 + b)
    assert s0 > 0
    mu, d = 1e4, 1e-3
    res = visualize(
        lambda x: jnp.array([w @ x + b]),
        units([0], goal="below", penalty=mu, margin=d),
        shape=(4,),
        param="pixels",
        bounds=None,
        reference=x0,
        solver=solvers.LBFGS(),
        steps=60,
        key=jax.random.key(0),
    )
    nw2 = float(w @ w)
    projection = np.asarray(x0 - s0 / nw2 * w)
    tau = mu * (s0 + d) / (1 + mu * nw2)
    bound = abs(tau - s0 / nw2) * np.sqrt(nw2)  # penalty-form offset, ~1.7e-4 here
    x = np.asarray(res.images[0, 0])
    assert float(res.score[0, 0]) <= 0.0
    np.testing.assert_allclose(x, np.asarray(x0 - tau * w), atol=1e-5)  # the penalty minimiser
    assert np.linalg.norm(x - projection) <= bound + 1e-5


def _conv_layer(channels_out=64, seed=0):
    k = jax.random.normal(jax.random.key(seed), (3, 3, 1, channels_out)) / 3
    calls = {"n": 0}

    def fn(x):
        calls["n"] += 1  # Python side effect: counts traces, not executions
        y = jax.lax.conv_general_dilated(
            x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]
        return jax.nn.relu(y)

    return fn, calls


@functools.cache
def _conv64():
    """One 64-channel layer for the tests below, so that they share its compiled programs."""
    return _conv_layer()


CONV64_KW = dict(shape=(8, 8, 1), key=jax.random.key(0), steps=3, transforms=(Pad(2), Jitter(4)))


def test_64_channels_are_one_program_compiled_once():
    fn, calls = _conv64()
    kw = CONV64_KW
    before = calls["n"]  # another test may have compiled the programs already
    first = visualize(fn, channels(range(64)), **kw)
    traced = calls["n"]
    assert first.images.shape == (64, 1, 8, 8, 1) and first.loss.shape == (64, 3)
    # the programs (init, step, score) and the shape inference trace fn a fixed number of
    # times, independent of the 64 channels: one vmapped program, not one per channel
    assert traced - before <= 5
    # other channels: the same compiled programs, nothing traced again; and a row depends on
    # its own channel and key fold only (row 0 is channel 0 with fold_in(key, 0) both times)
    second = visualize(fn, channels([0] * 64), **kw)
    assert calls["n"] == traced
    np.testing.assert_allclose(second.images[0], first.images[0], atol=1e-6)
    assert not np.allclose(second.images[1], first.images[1])


def test_jit_equals_eager():
    # jit=False runs the same functions op by op, and every primitive then compiles on its own
    # at first use, so the case is tiny: plain pixels in a box, no transforms, two steps (the
    # transforms, the Fourier rendering and the diversity term are checked compiled below).
    # The jitted programs are those of the sign-corner test above (same fn, read-outs, shape).
    kw = dict(shape=(4,), key=jax.random.key(3), steps=2, param="pixels", bounds=(-1.0, 1.0))
    jitted = visualize(_linear, units([0, 1]), **kw)
    eager = visualize(_linear, units([0, 1]), **kw, jit=False)
    assert not np.allclose(jitted.images, 0.0)  # the steps moved the start
    np.testing.assert_allclose(jitted.images, eager.images, atol=1e-6)
    np.testing.assert_allclose(jitted.loss, eager.loss, rtol=1e-5)


def test_compiled_loop_equals_host_loop():
    # Fourier rendering, pad and jitter; the host loop's programs are those of the 64-channel
    # test above (Scale and Rotate, the bulk of a compile, have their closed forms below)
    fn, _ = _conv64()
    host = visualize(fn, channels(range(64)), **CONV64_KW)
    scan = visualize(fn, channels(range(64)), **CONV64_KW, loop="scan")
    np.testing.assert_allclose(host.images, scan.images, atol=1e-5)
    np.testing.assert_allclose(host.loss, scan.loss, rtol=1e-4)


def test_diversity_makes_the_images_of_one_unit_differ():
    # drive a channel mean to 0.3: many inputs do it; without the diversity term the two
    # images of the unit stay near each other (starts differ by 0.01 noise), with it they part
    fn, _ = _conv_layer(4)
    kw = dict(shape=(8, 8, 1), key=jax.random.key(0), steps=40, batch=2, param="pixels")
    same = visualize(fn, channels([1], goal="value", value=0.3), **kw)
    spread = visualize(fn, channels([1], goal="value", value=0.3), **kw, diversity=1.0)
    gap = lambda r: float(jnp.linalg.norm(r.images[0, 0] - r.images[0, 1]))  # noqa: E731
    assert gap(spread) > 2 * gap(same)
    np.testing.assert_allclose(same.score, 0.3, atol=0.02)


def test_readouts_are_the_stated_linear_functionals():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    s = lambda u: (u.weights(a.shape) * a).reshape(len(u), -1).sum(1)  # noqa: E731
    np.testing.assert_allclose(s(channels([1, 3])), a[..., [1, 3]].mean((0, 1)))
    np.testing.assert_allclose(s(positions([(1, 2)])), [a[1, 2].mean()])
    np.testing.assert_allclose(s(units([(0, 1, 2)])), [a[0, 1, 2]])
    v = np.array([[1.0, 0, -1, 2]], np.float32)
    np.testing.assert_allclose(s(directions(v)), [(a @ v[0]).mean()], rtol=1e-6)
    np.testing.assert_allclose(s(weights(a[None])), [(a * a).sum()])


def test_fourier_parameterisation():
    # the 1/f scale: max(h, w) at DC, 1/|f| elsewhere (|f| = 0.5 at the Nyquist corner row)
    scale = visualize_params.fourier_scale(8, 8)
    assert scale.shape == (8, 5) and scale[0, 0] == 8 and scale[0, 4] == pytest.approx(2.0)
    p = visualize_params.Parameterisation("fourier", (8, 8, 1), bounds=None)
    z = jnp.zeros((1, *p.z_shape)).at[0, 0, 0, 0, 0].set(1.0)  # DC coefficient 1
    # orthonormal irfft2 of a DC impulse is the constant 1/sqrt(64); times the scale 8, over 4
    np.testing.assert_allclose(p.render(z), np.full((1, 8, 8, 1), 8 / 8 / 4), rtol=1e-6)
    squashed = visualize_params.Parameterisation(
        "fourier", (8, 8, 3), decorrelate=True, bounds=(0.0, 1.0)
    )
    # batch 2, as in the module's doctest: the eager ops compiled there are reused
    np.testing.assert_allclose(squashed.render(jnp.zeros((2, *squashed.z_shape))), 0.5)


def test_transforms_closed_forms():
    # (8, 8, 1), as in the module's doctest: the eager ops compiled there are reused
    x = jax.random.uniform(jax.random.key(0), (8, 8, 1))
    key = jax.random.key(1)
    np.testing.assert_allclose(Scale((1.0,))(key, x), x, atol=1e-6)
    np.testing.assert_allclose(Rotate((0.0,))(key, x), x, atol=1e-6)
    np.testing.assert_allclose(Rotate((90.0,))(key, x), jnp.rot90(x, k=1, axes=(0, 1)), atol=1e-5)
    assert Pad(3)(key, x).shape == (14, 14, 1) and float(Pad(3, 0.25)(key, x)[0, 0, 0]) == 0.25
    crop = Jitter(3)(key, x)
    offsets = [
        (i, j) for i in range(3) for j in range(3) if np.allclose(crop, x[i : i + 5, j : j + 5])
    ]
    assert crop.shape == (5, 5, 1) and len(offsets) == 1
    # the same key gives the same transform; the chain's shape is static
    chain = standard(pad=2, jitter=2, jitter_after=1)
    y1 = visualize_transforms.apply(chain, key, x)
    np.testing.assert_array_equal(y1, visualize_transforms.apply(chain, key, x))
    assert y1.shape == visualize_transforms.out_shape(chain, x.shape) == (9, 9, 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(param="wavelet"), ValueError, "param must be one of"),
        (dict(steps=0), ValueError, "steps must be an int >= 1, got 0"),
        (dict(key=0), TypeError, "key must be one jax.random.key"),
        (dict(diversity=1.0), ValueError, "needs batch >= 2, got 1"),
        (dict(units=channels([9])), ValueError, "channel 9 out of range for 4 channels"),
        (dict(units=channels([0], goal="below")), ValueError, "needs reference=x0"),
        (
            dict(shape=(64,), param="pixels", transforms=standard()),
            ValueError,
            "fn cannot|need images",
        ),
        (dict(transforms=(Jitter(20),)), ValueError, "Jitter d=20 needs images larger"),
        (dict(bounds=(1.0, 0.0)), ValueError, "lo < hi"),
        (dict(units=[0]), TypeError, "units must be"),
        (dict(solver="adam"), TypeError, "solver must be"),
    ],
)
def test_bad_input_is_refused_before_compiling(kwargs, error, match):
    fn, calls = _conv_layer(4)
    args = dict(units=channels([0]), shape=(8, 8, 1), key=jax.random.key(0), steps=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        visualize(fn, args.pop("units"), **args)
    assert calls["n"] <= 1  # at most jax.eval_shape: nothing compiled or run
