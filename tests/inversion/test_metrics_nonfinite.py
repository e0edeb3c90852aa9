"""inversion.metrics with a NaN or inf pixel: a ValueError naming the metric and the argument
(psnr used to return NaN silently; hard dice/iou counted a NaN as background)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.metrics import dice, iou, psnr, relative_error, ssim

IMG = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 1)), jnp.float32)
BAD = IMG.at[1, 3, 4, 0].set(jnp.nan)


@pytest.mark.parametrize(
    "metric, names",
    [
        (psnr, ("x", "ref")),
        (relative_error, ("x", "ref")),
        (ssim, ("x", "ref")),
        (dice, ("pred", "mask")),
        (iou, ("pred", "mask")),
    ],
)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_is_a_value_error(metric, names, value):
    bad = IMG.at[1, 3, 4, 0].set(value)
    label = metric.__name__
    with pytest.raises(ValueError, match=rf"{label}: {names[0]} has 1 NaN or inf entries"):
        metric(bad, IMG)
    with pytest.raises(ValueError, match=rf"{label}: {names[1]} has 1 NaN or inf entries"):
        metric(IMG, np.asarray(bad))  # host arrays too
    assert np.isfinite(metric(IMG, 0.9 * IMG))  # finite input still works


def test_under_jit_nan_propagates_as_documented():
    assert np.isnan(jax.jit(psnr)(BAD[1], IMG[1]))
    assert np.isnan(jax.jit(relative_error)(BAD, IMG))
