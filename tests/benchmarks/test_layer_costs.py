"""The layer-cost probe: its Winograd convolutions equal lax's, and it reports every layer."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import layer_costs


def _lax(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _value_and_input_gradient(conv, x, k, c):
    y, vjp = jax.vjp(lambda v: conv(v, k), x)
    return y, vjp(c)[0]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3, 5), (1, 7, 9, 4, 2)])  # even / ragged tiles
def test_winograd_equals_lax_values_and_input_gradients(m, shape):
    b, h, w, ci, co = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(b, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, ci, co)) / 3, jnp.float32)
    c = jnp.asarray(rng.normal(size=(b, h, w, co)), jnp.float32)
    ref, g_ref = jax.jit(lambda *a: _value_and_input_gradient(_lax, *a))(x, k, c)
    wino = functools.partial(layer_costs.winograd_conv3x3, m=m)
    got, g_got = jax.jit(lambda *a: _value_and_input_gradient(wino, *a))(x, k, c)
    np.testing.assert_allclose(got, ref, atol=1e-5 * float(jnp.max(jnp.abs(ref))))
    np.testing.assert_allclose(g_got, g_ref, atol=1e-5 * float(jnp.max(jnp.abs(g_ref))))


def test_measure_reports_layers_and_steps():
    out = layer_costs.measure(
        rows=1, repeats=1, step_rows=(2,), matmul_n=128, only=("dec2",), log=lambda _: None
    )
    convs = out["layers"]
    assert {r["layer"] for r in convs} == {"dec2 conv 3x3 64->32"}
    assert {r["variant"] for r in convs} == {"engine (lax)", "winograd F(2,3)", "winograd F(4,3)"}
    for row in convs + [out["step"]]:
        assert math.isfinite(row["ms"]) and row["ms"] > 0
    assert all(r["max_rel_diff_vs_lax"] < 1e-5 for r in convs if "max_rel_diff_vs_lax" in r)
    lax_flops = next(r["flops"] for r in convs if r["variant"] == "engine (lax)")
    assert lax_flops > 0 and out["step"]["flops"] > lax_flops
    assert [s["rows"] for s in out["steps"]] == [1, 2]
    assert out["steps"][1]["flops"] == pytest.approx(2 * out["steps"][0]["flops"], rel=0.05)


def test_every_layer_of_the_seed_unet_is_listed_and_bad_options_raise():
    from models import seed_unet

    kernels = {n.split(".")[0]: m.kernel[...] for n, m in seed_unet(0).conv_layers().items()}
    cases = layer_costs.layer_cases(kernels, rows=2)
    assert {c[0].split()[0] for c in cases} == set(layer_costs.LAYERS)
    for _, _, fn, shapes in cases:  # shapes only: nothing is compiled
        assert all(s[0] == 2 for s in shapes)
        assert jax.eval_shape(fn, *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]).ndim == 4
    with pytest.raises(ValueError, match="unknown layer"):
        layer_costs.measure(rows=1, repeats=1, only=("enc9",), log=lambda _: None)
    with pytest.raises(ValueError, match="rows >= 1"):
        layer_costs.measure(rows=0, log=lambda _: None)
