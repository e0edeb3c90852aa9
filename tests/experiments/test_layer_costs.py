"""The layer-cost probe: its Winograd convolutions equal lax's, and it reports every layer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import layer_costs


def _lax(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3, 5), (1, 7, 9, 4, 2), (2, 5, 5, 1, 3)])
def test_winograd_equals_lax_values_and_input_gradients(m, shape):
    b, h, w, ci, co = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(b, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, ci, co)) / 3, jnp.float32)
    ref, vjp_ref = jax.vjp(lambda v: _lax(v, k), x)
    got, vjp_got = jax.vjp(lambda v: layer_costs.winograd_conv3x3(v, k, m), x)
    np.testing.assert_allclose(got, ref, atol=1e-5 * float(jnp.max(jnp.abs(ref))))
    c = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    g_ref, g_got = vjp_ref(c)[0], vjp_got(c)[0]
    np.testing.assert_allclose(g_got, g_ref, atol=1e-5 * float(jnp.max(jnp.abs(g_ref))))


def test_measure_reports_every_layer():
    out = layer_costs.measure(rows=1, repeats=1, step_rows=(2,), matmul_n=128, log=lambda _: None)
    names = {r["layer"].split()[0] for r in out["layers"]}
    assert names == {"enc1", "pool1", "pool2", "up2", "up1", "cat1", "out", "enc2",
                     "bottleneck", "dec2"}
    for row in out["layers"] + [out["step"]]:
        assert math.isfinite(row["ms"]) and row["ms"] > 0
    convs = [r for r in out["layers"] if r["layer"].startswith("dec2")]
    assert {r["variant"] for r in convs} == {"engine (lax)", "winograd F(2,3)", "winograd F(4,3)"}
    assert all(r["max_rel_diff_vs_lax"] < 1e-5 for r in convs if "max_rel_diff_vs_lax" in r)
    lax_flops = next(r["flops"] for r in convs if r["variant"] == "engine (lax)")
    assert lax_flops > 0 and out["step"]["flops"] > lax_flops
    assert [s["rows"] for s in out["steps"]] == [1, 2]
    assert out["steps"][1]["flops"] == pytest.approx(2 * out["steps"][0]["flops"], rel=0.05)
    with pytest.raises(ValueError, match="rows >= 1"):
        layer_costs.measure(rows=0, log=lambda _: None)
