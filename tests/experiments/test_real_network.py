"""experiments.real_network: its pieces on closed forms (the full run takes minutes: it is
an experiment, run by `make reproduce`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from experiments import real_network


def test_reconstruction_methods_on_a_wide_linear_map():
    """fn(x) = A x with A of rank 4 on 12 inputs. P projects onto row(A), so the recoverable
    point has visible error 0 and lost error 1 (it keeps the start's null-space part), steps
    confined to the row space leave the lost part exactly at the start's (lost error 1), and
    plain Adam, whose gradient A^T r also lies in row(A), does too, while it fits the visible
    part."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((4, 12)))
    fn = lambda x: a @ x.reshape(-1)  # noqa: E731
    x_true = rng.uniform(0.2, 0.8, (2, 2, 2, 3)).astype(np.float32)
    config = real_network.Config(steps=300, lr=0.05, tv_weight=0.0)
    out = real_network.reconstructions(fn, x_true, config=config)
    s = out["summary"]
    assert s["recoverable"]["visible_error"] < 1e-6
    np.testing.assert_allclose(s["recoverable"]["lost_error"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(s["row-space steps"]["lost_error"], 1.0, rtol=1e-4)
    np.testing.assert_allclose(s["start"]["visible_error"], 1.0, rtol=1e-12)
    assert s["optimised"]["visible_error"] < 0.05  # 300 Adam steps on a 4-dim least squares
    # its lost part moves only where the box clips a step (measured 1.056)
    np.testing.assert_allclose(s["optimised"]["lost_error"], 1.0, atol=0.1)
    # the lost part is the null-space component of truth - start: A maps it to 0
    lost = out["lost"].reshape(2, -1)
    assert np.max(np.abs(lost @ np.asarray(a).T)) < 1e-6


def test_resolution_changes_picks_stage_ends():
    shapes = {
        "stem": (16, 16, 8),
        "s1": (16, 16, 8),
        "se": (1, 1, 8),  # squeeze-excitation maps are not stage ends
        "s1b": (16, 16, 8),
        "down": (8, 8, 16),
        "flat": (16,),
        "up": (16, 16, 4),
        "logits": (32, 32, 1),
    }
    assert real_network.resolution_changes(shapes, 8) == ["s1b", "down", "up"]
    assert real_network.resolution_changes(shapes, 2) == ["s1b", "up"]


def test_full_rank_map_has_no_lost_part():
    """An invertible linear map determines everything: the recoverable point is the truth and
    the lost-part errors are None (the start has no null-space part), not 0/0."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((12, 12)) + 4 * np.eye(12))
    fn = lambda x: a @ x.reshape(-1)  # noqa: E731
    x_true = rng.uniform(0.2, 0.8, (1, 2, 2, 3)).astype(np.float32)
    out = real_network.reconstructions(fn, x_true, config=real_network.Config(steps=5))
    s = out["summary"]
    assert s["recoverable"]["visible_error"] < 1e-6 and s["recoverable"]["psnr"] > 100
    assert all(s[m]["lost_error"] is None for m in s)
