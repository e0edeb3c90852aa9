"""inversion.analysis.inverse_condition against the closed form of a diagonal map."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import inverse_condition

D = jnp.array([3.0, 0.5, 2.0])


def test_inverse_condition_of_a_diagonal_map():
    """f(x) = D x: σ_min = min D, so κ = ‖D x‖ / (min D ‖x‖) exactly (float64 certificate;
    rtol 1e-6 covers the float32 inputs' y)."""
    xs = jnp.array([[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    fn = lambda x: D * x  # noqa: E731
    expected = [np.linalg.norm(D * x) / (0.5 * np.linalg.norm(x)) for x in np.asarray(xs)]
    np.testing.assert_allclose(inverse_condition(fn, xs), expected, rtol=1e-6)
    np.testing.assert_allclose(inverse_condition(fn, xs, ys=D * xs), expected, rtol=1e-6)
    np.testing.assert_allclose(inverse_condition(fn, xs)[1], 1.0, rtol=1e-6)  # along σ_min
    with pytest.raises(ValueError, match=r"xs rows \[0\] are zero"):
        inverse_condition(fn, jnp.zeros((1, 3)))
    singular = inverse_condition(lambda x: x.at[0].set(0.0), xs[:1])
    assert singular[0] == np.inf
