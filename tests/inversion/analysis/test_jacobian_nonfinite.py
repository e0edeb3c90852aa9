"""jacobian_spectrum at a non-finite point or where the Jacobian is not finite: a ValueError
naming x or the Jacobian (it used to end in NumPy's 'SVD did not converge' or in ARPACK)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import jacobian_spectrum


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_non_finite_x_is_a_value_error(bad, method):
    x = jnp.asarray([1.0, bad, 2.0, 3.0, 0.5])
    with pytest.raises(ValueError, match=r"x has 1 NaN or inf entries \(shape \(5,\)\)"):
        jacobian_spectrum(lambda v: v**2, x, method=method)


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_non_finite_jacobian_is_a_value_error(method):
    x = jnp.asarray([1.0, 0.0, 2.0, 3.0, 4.0])  # d sqrt / dx = inf at 0
    with pytest.raises(ValueError, match="Jacobian of fn at x is not finite"):
        jacobian_spectrum(jnp.sqrt, x, method=method, k=2 if method == "lanczos" else None)


def test_finite_points_still_work():
    x = jnp.asarray([1.0, 0.5, 2.0, 3.0, 4.0])
    spec = jacobian_spectrum(jnp.sqrt, x, method="dense")
    np.testing.assert_allclose(np.sort(spec.singular_values), np.sort(0.5 / np.sqrt(x)), rtol=1e-6)
