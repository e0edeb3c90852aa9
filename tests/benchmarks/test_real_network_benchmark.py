"""benchmarks.real_network: the problem and the visible-part error on a closed form (the timed
comparison itself needs the bench extra and minutes: it is a benchmark)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from benchmarks import real_network


def test_problem_is_page_crops_in_the_box_with_a_grey_start():
    x_true, x0 = real_network.problem(32, 3)
    assert x_true.shape == x0.shape == (3, 32, 32, 3)
    assert 0.0 <= x_true.min() and x_true.max() <= 1.0
    np.testing.assert_array_equal(x_true[..., 0], x_true[..., 2])  # grey over three channels
    assert np.all(x0 == 0.5)


def test_visible_error_is_zero_for_the_row_space_projection_and_one_at_the_start():
    """fn(x) = A x (rank 3 of 8): x* + (a null-space vector) has visible error 0, the start 1,
    and the start's row-space part halved has 0.5."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 8))
    fn = lambda x: jnp.asarray(a) @ x.reshape(-1)  # noqa: E731
    x_true = rng.uniform(size=(1, 2, 2, 2))
    x0 = np.full_like(x_true, 0.5)
    null = np.linalg.svd(a)[2][-1].reshape(2, 2, 2)  # A null = 0
    row = np.linalg.pinv(a) @ a @ (x0 - x_true).reshape(-1)
    estimates = np.stack([x_true[0] + null, x0[0], x_true[0] + 0.5 * row.reshape(2, 2, 2)])
    errors = real_network.visible_errors(
        fn, estimates, np.repeat(x_true, 3, 0), np.repeat(x0, 3, 0)
    )
    np.testing.assert_allclose(errors, [0.0, 1.0, 0.5], atol=1e-9)
