"""certify's arguments: rtol in (0, 1) as any real scalar, an empty output and a batch without
an input axis are refused with a message naming them, before anything compiles."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import certify, certify_batch

SCALE = jnp.array([2.0, 1.0, 1e-3])


def fn(x):
    return SCALE * x


@pytest.mark.parametrize("rtol", [2.0, 1.0, 0.0, -1e-3, float("nan"), "1e-3", True, (1e-3,)])
def test_rtol_outside_the_open_unit_interval_is_refused(rtol):
    with pytest.raises(ValueError, match=r"rtol must be a real number in \(0, 1\)"):
        certify(fn, jnp.ones(3), rtol=rtol)


@pytest.mark.parametrize("rtol", [jnp.float32(1e-2), np.float64(1e-2), jnp.asarray(1e-2), 1e-2])
def test_rtol_accepts_any_real_scalar(rtol):
    """sigma = (2, 1, 1e-3): at rtol 1e-2 only 1e-3 <= 0.02 counts, so effective nullity 1."""
    cert = certify(fn, jnp.ones(3), rtol=rtol)
    assert cert.effective_nullity == 1 and cert.nullity == 0
    assert isinstance(cert.rtol, float) and cert.rtol == pytest.approx(1e-2, rel=1e-7)
    assert cert.nullity_at(jnp.float32(1e-4)) == 0  # the methods take any real scalar too


def test_an_empty_output_is_refused():
    with pytest.raises(ValueError, match=r"fn returns an empty output \(shapes \[\(0,\)\]\)"):
        certify(lambda x: x[:0], jnp.ones(3))
    with pytest.raises(ValueError, match="empty output"):
        certify(lambda x: {"a": x, "b": x[:0]}, jnp.ones(3))


def test_certify_batch_names_the_missing_input_axis():
    with pytest.raises(ValueError, match=r"batch of inputs.*got shape \(3,\).*xs\[:, None\]"):
        certify_batch(fn, jnp.ones(3))
    with pytest.raises(ValueError, match=r"at least one input.*\(0, 3\)"):
        certify_batch(fn, jnp.ones((0, 3)))
