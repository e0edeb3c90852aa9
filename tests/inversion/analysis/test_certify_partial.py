"""A partial Lanczos certificate (k < min(m, n)) gives bounds, never values that read as
exact: interlacing checked against NumPy's SVD, a singular square map, and how nullities() and
summarize() print the bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import certify, jacobian_spectrum, nullities, summarize

EPS64 = np.finfo(np.float64).eps


def _matrix(rng, m, n, singular_values):
    """``U diag(s) V^T`` with Haar-random orthonormal ``U`` (m x r), ``V`` (n x r)."""
    r = len(singular_values)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return (u * singular_values) @ v.T


@pytest.mark.parametrize("m,n", [(40, 25), (25, 25), (12, 30)])
def test_ritz_values_interlace_the_singular_values(m, n):
    """``sigma_j >= theta_j >= sigma_{j+q-k}`` (q = min(m, n)) for every j, tall, square and
    wide, to float64 rounding of the factorisation (1e-12 sigma_1)."""
    q, k = min(m, n), 7
    s = np.geomspace(2.0, 1e-3, q)
    a = _matrix(np.random.default_rng(m * n), m, n, s)
    cert = certify(lambda x: jnp.asarray(a) @ x, np.ones(n), method="lanczos", k=k)
    theta = cert.singular_values
    assert theta.shape == (k,) and not cert.complete
    for j in range(k):
        assert s[j] * (1 + 1e-12) >= theta[j] >= s[j + q - k] * (1 - 1e-12)
    assert cert.sigma_max_lower <= s[0] * (1 + 1e-12)
    assert cert.sigma_min_upper >= (s[-1] if m >= n else 0.0)
    if m >= n:
        assert cert.condition_number_lower <= s[0] / s[-1] * (1 + 1e-12)
    for t, res in zip(theta, cert.residuals, strict=True):
        assert np.min(np.abs(s - t)) <= res + 1e-12  # a singular value within the residual


def test_singular_square_map_partial_gives_bounds_and_no_values():
    """A 30 x 30 map of rank 24 (exact nullity 6), 10 Lanczos steps: every exact field is
    None or refuses, the bounds hold, and the nullity bound is valid but weak."""
    rng = np.random.default_rng(0)
    s = np.concatenate([np.geomspace(1.0, 1e-2, 24), np.zeros(6)])
    a = _matrix(rng, 30, 30, s)
    cert = certify(lambda x: jnp.asarray(a) @ x, np.ones(30), method="lanczos", k=10)
    assert not cert.complete
    assert cert.nullity is None and cert.effective_nullity is None and cert.rank is None
    assert cert.sigma_max is None and cert.sigma_min is None
    assert 0 <= cert.nullity_lower <= 6 and cert.effective_nullity_lower <= 6
    assert cert.sigma_min_upper >= 0.0 and cert.sigma_max_lower <= 1.0 + 1e-12
    # kappa is known only when a zero was seen (inf exactly), else only a lower bound
    if cert.nullity_lower > 0:
        assert cert.condition_number == np.inf
    else:
        assert cert.condition_number is None and np.isfinite(cert.condition_number_lower)
    with pytest.raises(ValueError, match="incomplete.*nullity_lower_at"):
        cert.nullity_at(1e-3)
    with pytest.raises(ValueError, match="incomplete: sigma_min is unknown"):
        cert.input_error_bound(1.0)
    with pytest.raises(ValueError, match="needs the complete spectrum"):
        cert.split(np.ones(30))
    dense = certify(lambda x: jnp.asarray(a) @ x, np.ones(30))
    assert dense.nullity == 6 and dense.condition_number == np.inf
    for rtol in (1e-12, 1e-3, 0.5):
        assert cert.nullity_lower_at(rtol) <= dense.nullity_at(rtol)


def test_rank_three_map_partial_run_past_the_rank_sees_null_directions():
    """Rank 3 of 30 inputs, 6 steps: the Krylov space is invariant after 4 steps and the run
    restarts in the null space, so zero Ritz values appear: a lower bound > 0 on the nullity
    proves the map singular (kappa = inf exactly) though the nullity itself stays unknown."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 30))
    cert = certify(lambda x: jnp.asarray(a) @ x, np.zeros(30), method="lanczos", k=6)
    assert cert.nullity is None and 1 <= cert.nullity_lower <= 27
    assert cert.condition_number == np.inf
    ref = np.linalg.svd(a, compute_uv=False)[:3]
    np.testing.assert_allclose(cert.singular_values[:3], ref, rtol=1e-12)


def test_nullities_and_summary_print_bounds_as_bounds():
    rng = np.random.default_rng(3)
    a = _matrix(rng, 20, 20, np.concatenate([np.geomspace(1.0, 1e-6, 17), np.zeros(3)]))
    fn = lambda x: jnp.asarray(a) @ x  # noqa: E731
    part = certify(fn, np.ones(20), method="lanczos", k=5, key=jax.random.key(1))
    full = certify(fn, np.ones(20))
    bounds = nullities(part)
    assert all(isinstance(v, str) and v.startswith("≥ ") for v in bounds.values())
    assert bounds["exact"] == f"≥ {part.nullity_lower}"
    assert nullities(full) == {
        "exact": 3,
        "float32": full.nullity_at(20 * np.finfo(np.float32).eps),
        "8-bit": full.nullity_at(1 / 255),
    }
    summary = summarize([full, part])
    assert summary["exact"]["nullity_per_input"] == [3, f"≥ {part.nullity_lower}"]
    assert summary["exact"]["max_nullity"] == "≥ 3"  # the complete input has 3
    assert summary["exact"]["lossy_inputs"] in (2, "≥ 1")  # known only if part saw a zero
    assert all(v.startswith("≤ ") for v in summary["sigma_min_range"])
    assert all(v.startswith("≥ ") for v in summary["condition_number_range"])
    assert summary["complete"] is False
    # all complete: plain numbers as before
    plain = summarize([full, full])
    assert plain["exact"]["max_nullity"] == 3 and plain["complete"] is True
    assert plain["sigma_min_range"] == [full.sigma_min, full.sigma_min]
    with pytest.raises(TypeError, match="cert must be a Certificate"):
        nullities({"exact": 1})


def test_jacobian_spectrum_lanczos_rank_needs_the_rest_of_the_spectrum_below_tol():
    """jacobian_spectrum is a view of certify's Lanczos: diag(1, 1, 1, 0, ..., 0) on 50 inputs.
    A repeated singular value defeats one Krylov space; the rank is declared exact only when
    Gaussian probes of the complement of the Ritz vectors show the rest below tol."""
    d = jnp.asarray(np.r_[np.ones(3), np.zeros(47)])
    top2 = jacobian_spectrum(lambda x: d * x, jnp.zeros(50), method="lanczos", k=2)
    assert top2.rank == 2 and not top2.complete  # a third 1 remains: a lower bound only
    np.testing.assert_allclose(top2.singular_values, [1.0, 1.0], rtol=1e-12)
    top4 = jacobian_spectrum(lambda x: d * x, jnp.zeros(50), method="lanczos", k=4)
    assert top4.rank == 3 and top4.nullity == 47 and top4.complete
