"""The time-to-quality benchmark's problem file and driver (no timing assertions).

The problem file is written here by hand from an untrained seed U-Net, i.e. "by someone else":
the benchmark must rebuild the same network from the arrays alone.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from benchmarks import seed_problem, time_to_quality


def _write(path, n=2, size=8, drop=None):
    model = models.seed_unet(3)
    x_true = np.asarray(jax.random.uniform(jax.random.key(0), (n, size, size, 1)), np.float32)
    arrays = {
        "x_true": x_true,
        "targets": np.asarray(model(jnp.asarray(x_true))),
        "x0": np.full_like(x_true, 0.5),
    }
    for name, layer in model.conv_layers().items():
        arrays[f"{name}/kernel"] = np.asarray(layer.kernel[...])
        arrays[f"{name}/bias"] = np.asarray(layer.bias[...])
    if drop is not None:
        del arrays[drop]
    np.savez(path, **arrays)
    return model, x_true


def test_network_rebuilt_from_the_file_equals_the_model(tmp_path):
    model, x_true = _write(tmp_path / "p.npz")
    problem = seed_problem.load_problem(tmp_path / "p.npz")
    assert tuple(problem.weights) == seed_problem.LAYERS
    fn = seed_problem.seed_unet_fn(problem.weights)
    # the same lax convolutions on the same arrays in the same order: bitwise equal
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(fn)(jnp.asarray(x_true))), np.asarray(model(jnp.asarray(x_true)))
    )


def test_bad_problem_files_are_refused_with_the_array_named(tmp_path):
    _write(tmp_path / "a.npz", drop="up1/bias")
    with pytest.raises(ValueError, match="up1/bias"):
        seed_problem.load_problem(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="does not exist"):
        seed_problem.load_problem(tmp_path / "missing.npz")


def test_budgeted_run_writes_every_field(tmp_path):
    _write(tmp_path / "p.npz", n=2, size=8)
    out = time_to_quality.main(
        [
            "--problem",
            str(tmp_path / "p.npz"),
            "--budget-s",
            "3",
            "--certify",
            "1",
            "--json",
            str(tmp_path / "out.json"),
        ]  # fmt: skip
    )
    saved = json.loads((tmp_path / "out.json").read_text())
    for field in ("output_residual_median", "input_error_median", "seconds", "method",
                  "input_error_bound_median"):  # fmt: skip
        assert field in out and field in saved, field
    assert out["method"] == time_to_quality.BEST
    assert np.isfinite(out["output_residual_median"]) and out["output_residual_median"] >= 0
    assert out["certified_rows"] == 1 and out["input_error_bound_median"] >= 0
    assert out["steps_median"] >= 1


def test_cli_refuses_a_missing_budget(tmp_path):
    _write(tmp_path / "p.npz")
    with pytest.raises(SystemExit):
        time_to_quality.main(["--problem", str(tmp_path / "p.npz")])


def test_leaky_family_at_slope_zero_is_the_network_and_leaks_otherwise(tmp_path):
    """Slope 0 is the network itself (bitwise: the same operations, where(x >= 0, x, 0 x) =
    relu(x) for finite x); a positive slope changes the output (an untrained U-Net has
    negative pre-activations at a random input)."""
    _, x_true = _write(tmp_path / "p.npz", n=1, size=8)
    problem = seed_problem.load_problem(tmp_path / "p.npz")
    fn = seed_problem.seed_unet_fn(problem.weights)
    family = time_to_quality.seed_unet_family(problem.weights)
    x = jnp.asarray(x_true[0])
    np.testing.assert_array_equal(np.asarray(family(0.0)(x)), np.asarray(fn(x)))
    assert float(jnp.max(jnp.abs(family(0.1)(x) - fn(x)))) > 0


def test_cli_refuses_bad_certified_time_before_running(tmp_path):
    _write(tmp_path / "p.npz")
    for bad in ("x", "0,1", ""):
        with pytest.raises(SystemExit):
            time_to_quality.main(
                ["--problem", str(tmp_path / "p.npz"), "--budget-s", "1", "--certified-time", bad]
            )
