"""Bad input to inversion.invert / invert_batch: clear TypeError/ValueError naming the argument,
the value and what was expected, raised before anything compiles; low-precision starts
computed in the promoted dtype; a start where the objective is NaN gives no NaN anywhere."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inversion
from inversion import engine
from inversion.engine import invert, invert_batch, step_cost

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)


def fn(x):
    return jnp.tanh(A @ x)


Y = fn(jnp.asarray([0.3, -0.2, 0.5]))


@pytest.fixture
def no_solve(monkeypatch):
    def fail(*_a, **_k):
        raise AssertionError("validation must fail before anything is compiled or run")

    monkeypatch.setattr(engine.driver, "run", fail)


# ------------------------------------------------------------------------- complex, strings


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target=Y.astype(jnp.complex64)), r"target is complex \(complex64\)"),
        (dict(target=np.asarray(Y, np.float64) + 1j), r"target is complex \(complex128\)"),
        (dict(x0=jnp.ones(3, jnp.complex64), x_shape=None), r"x0 is complex"),
        (dict(bounds=(0.0, 1.0 + 2j)), r"bounds hi is complex"),
        (dict(target="abc"), r"target must be an array of real numbers, got the string 'abc'"),
        (dict(target=["a", "b", "c", "d"]), r"target must be an array of real numbers.*<U1"),
        (dict(x0="abc", x_shape=None), r"x0 must be an array of real numbers.*'abc'"),
        (dict(bounds=("a", "b")), r"bounds lo must be an array of real numbers.*'a'.*pair"),
        (dict(bounds=(0.0, "b")), r"bounds hi must be an array of real numbers.*'b'"),
        (dict(target=jax.random.key(0)), r"target must be an array of real numbers.*PRNG key"),
    ],
)
def test_invert_rejects_non_real_values(no_solve, kwargs, match):
    args = dict(target=Y, x_shape=(3,), steps=3)
    args.update(kwargs)
    with pytest.raises(TypeError, match=match):
        invert(fn, args.pop("target"), **args)


def test_invert_batch_rejects_non_real_values(no_solve):
    with pytest.raises(TypeError, match="targets is complex"):
        invert_batch(fn, Y[None].astype(jnp.complex64), starts=inversion.Starts(x_shape=(3,)))
    with pytest.raises(TypeError, match="targets must be an array of real numbers.*'abc'"):
        invert_batch(fn, "abc", starts=inversion.Starts(x_shape=(3,)))
    with pytest.raises(TypeError, match="x0 is complex"):
        invert_batch(fn, Y[None], x0=jnp.ones((1, 3), jnp.complex64))
    with pytest.raises(TypeError, match="targets is complex"):
        step_cost(fn, Y[None].astype(jnp.complex64), x0=jnp.ones((1, 3)))


def test_complex_is_an_error_not_a_warning(no_solve):
    """It used to pass with only a ComplexWarning, dropping the imaginary part."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning would surface as itself, not TypeError
        with pytest.raises(TypeError, match="complex"):
            invert(fn, Y + 0.5j, starts=inversion.Starts(x_shape=(3,)))


# ------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("x_shape", [(0,), (2, 0), [0]])
def test_empty_x_shape_is_rejected(no_solve, x_shape):
    with pytest.raises(ValueError, match=r"x_shape must be a tuple of positive ints, got \("):
        invert(lambda x: x, jnp.zeros(0), starts=inversion.Starts(x_shape=x_shape))
    with pytest.raises(ValueError, match="x_shape must be a tuple of positive ints"):
        invert_batch(lambda x: x, jnp.zeros((2, 0)), starts=inversion.Starts(x_shape=x_shape))


def test_bad_x_shape_types(no_solve):
    for bad in [(True,), (2.0,), 3, "3"]:
        with pytest.raises(TypeError, match="x_shape must be a tuple of positive ints"):
            invert(fn, Y, starts=inversion.Starts(x_shape=bad))


def test_empty_x0_and_empty_output_are_rejected(no_solve):
    with pytest.raises(ValueError, match=r"x0 has shape \(0,\).*no entries"):
        invert(lambda x: x, jnp.zeros(0), x0=jnp.zeros(0))
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 0\).*no entries"):
        invert_batch(lambda x: x, jnp.zeros((2, 0)), x0=jnp.zeros((2, 0)))
    with pytest.raises(ValueError, match=r"empty output of shape \(0,\)"):
        invert(lambda x: x[:0], jnp.zeros(0), starts=inversion.Starts(x_shape=(3,)))


# ------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "key, error, match",
    [
        (0, TypeError, r"key must be a jax.random key.*got int 0"),
        (np.zeros(2, np.uint32), TypeError, r"key must be a jax.random key.*got ndarray"),
        (jnp.zeros(2), TypeError, r"key must be .*raw uint32 key of shape \(2,\).*dtype float32"),
        (jnp.zeros(3, jnp.uint32), TypeError, r"key must be .*got .*uint32 and shape \(3,\)"),
        (
            jax.random.split(jax.random.key(0), 2),
            ValueError,
            r"key must be ONE jax.random key of shape \(\), got a key array of shape \(2,\)",
        ),
    ],
)
def test_bad_keys_are_named(no_solve, key, error, match):
    with pytest.raises(error, match=match):
        invert(fn, Y, starts=inversion.Starts(x_shape=(3,), key=key))
    with pytest.raises(error, match=match):
        invert_batch(fn, Y[None], starts=inversion.Starts(x_shape=(3,), key=key, restarts=2))


def test_raw_and_typed_keys_give_the_same_start():
    typed = invert(fn, Y, steps=2, starts=inversion.Starts(x_shape=(3,), key=jax.random.key(3)))
    raw = invert(fn, Y, steps=2, starts=inversion.Starts(x_shape=(3,), key=jax.random.PRNGKey(3)))
    np.testing.assert_array_equal(typed.x, raw.x)


# ------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("loop", ["python", "compiled"])
def test_low_precision_x0_runs_in_the_promoted_dtype(low, loop):
    """Rule: x0 is cast to promote_types(x0.dtype, fn's output dtype) = float32 here."""
    x0 = jnp.asarray([0.1, 0.2, -0.1], low)
    kw = dict(steps=4, loop=loop, optimizer="sgd", learning_rate=0.1)
    res = invert(fn, Y, x0=x0, **kw)
    ref = invert(fn, Y, x0=x0.astype(jnp.float32), **kw)
    assert res.x.dtype == jnp.float32 and res.history.dtype == jnp.float32
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    batch = invert_batch(fn, jnp.stack([Y, Y]), x0=jnp.stack([x0, x0]), **kw)
    assert batch.x.dtype == jnp.float32
    np.testing.assert_array_equal(batch.x[1], ref.x)


def test_low_precision_fn_with_float32_x0():
    """An fn computing in bfloat16 gives a bfloat16 objective: the history stays float32."""
    low_fn = lambda x: jnp.tanh(A.astype(jnp.bfloat16) @ x.astype(jnp.bfloat16))  # noqa: E731
    res = invert(
        low_fn,
        Y,
        x0=jnp.zeros(3),
        steps=3,
        solver=inversion.solvers.Optax(optax.sgd(0.1)),
        execution=inversion.Execution(loop="python"),
    )
    assert res.x.dtype == jnp.float32 and res.history.dtype == jnp.float32
    assert np.all(np.isfinite(res.history)) and res.status == "max_steps"


# ------------------------------------------------------------------------- NaN from the start


def nan_at_start(x):
    return jnp.log(-jnp.abs(A @ x) - 1.0)  # NaN everywhere


@pytest.mark.parametrize("loop", ["python", "compiled"])
def test_objective_nan_from_the_first_step_gives_no_nan(loop):
    x0 = jnp.asarray([0.1, 0.2, -0.1])
    res = invert(nan_at_start, Y, x0=x0, steps=5, execution=inversion.Execution(loop=loop))
    assert res.status == "diverged" and int(res.steps) == 0
    np.testing.assert_array_equal(res.x, x0)  # the last finite x is x0
    assert not np.any(np.isnan(res.history)) and np.all(res.history == np.inf)
    assert res.loss == np.inf and res.residual == np.inf
    assert res.history.shape == (5,)


def test_nan_loss_with_finite_fn_keeps_the_finite_residual():
    res = invert(
        fn,
        Y,
        x0=jnp.zeros(3),
        steps=3,
        problem=inversion.Problem(loss=lambda p, t: jnp.sum(p) * jnp.nan),
    )
    assert res.status == "diverged" and int(res.steps) == 0
    assert res.loss == np.inf and np.all(res.history == np.inf)
    np.testing.assert_allclose(res.residual, 1.0)  # fn(0) = 0: ||0 - y|| / ||y||


def test_a_nan_row_does_not_touch_the_other_rows():
    row_fn = lambda x: jnp.where(x[0] > 5.0, jnp.nan, 1.0) * fn(x)  # noqa: E731
    x0 = jnp.asarray([[0.1, 0.2, -0.1], [9.0, 0.0, 0.0]])
    kw = dict(steps=4, optimizer="sgd", learning_rate=0.1)
    res = invert_batch(row_fn, jnp.stack([Y, Y]), x0=x0, **kw)
    alone = invert(row_fn, Y, x0=x0[0], **kw)
    assert list(res.status) == ["max_steps", "diverged"]
    np.testing.assert_array_equal(res.x[0], alone.x)
    np.testing.assert_array_equal(res.history[0], alone.history)
    np.testing.assert_array_equal(res.x[1], x0[1])
    assert np.all(res.history[1] == np.inf) and not np.any(np.isnan(res.history))
