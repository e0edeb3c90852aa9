"""Smoke runs of the information-loss experiments (quick sizes): files written, key numbers."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")


def _load(directory):
    return json.loads((directory / "metrics.json").read_text())


def _refs(metrics):
    return {row["quantity"]: row for row in metrics["references"]}


def test_relu_preimage_quick(tmp_path):
    from experiments import relu_preimage

    relu_preimage.run(relu_preimage.get_config("quick"), tmp_path)
    d = tmp_path / "relu_preimage"
    for png in ("relu_fractions.png", "relu_seed_example.png", "relu_error_split.png"):
        assert (d / png).stat().st_size > 0
    m = _load(d)
    assert m["seed_example"]["y"] == [0.0, 2.0, 0.0, 4.0]
    assert m["seed_example"]["dim"] == 2 and m["seed_example"]["bounded"] is False
    sweep = m["sweep"]
    assert sweep["unique"][0] == 0.0 and sweep["unique"][-1] == 1.0  # m/n = 1 and m/n = 6
    assert all(b >= u for b, u in zip(sweep["bounded"], sweep["unique"], strict=True))
    assert all(
        i <= u + 1e-12 for i, u in zip(sweep["injective_on_sample"], sweep["unique"], strict=True)
    )
    assert 1.5 <= m["unique_transition_ratio"] <= 2.5
    assert m["injective_on_sample_ratio"] >= 2.0
    assert m["error_split"]["4"]["network_relative"] < 1e-6  # unique preimage: nothing lost
    assert m["error_split"]["1"]["network_relative"] > 0.1
    assert all(row["agrees"] for row in m["references"])


def test_pooling_loss_quick(tmp_path):
    from experiments import pooling_loss

    pooling_loss.run(pooling_loss.get_config("quick"), tmp_path)
    d = tmp_path / "pooling_loss"
    for png in ("pooling_ramp.png", "pooling_image.png"):
        assert (d / png).stat().st_size > 0
    m = _load(d)
    assert m["ramp_pooled"] == [[6.0, 8.0], [14.0, 16.0]]
    for name, row in m["jacobian"].items():
        assert row["rank"] == row["n_windows"], name
        assert row["nullity"] == pytest.approx(row["expected_nullity"]), name
    rec = m["ramp_reconstruction"]
    for name in ("gradient, zero start", "gradient, random start"):
        assert rec[name]["output_residual"] < 1e-3  # the output is matched ...
        assert rec[name]["relative_error"] > 0.2  # ... the input is not
    assert rec["gradient, zero start"]["relative_error"] == pytest.approx(
        rec["nearest upsampling"]["relative_error"], abs=1e-3
    )
    assert rec["unpool with switches (zeros)"]["output_residual"] == 0.0
    assert all(row["agrees"] for row in m["references"])


def test_conv_spectrum_quick(tmp_path):
    from experiments import conv_spectrum

    conv_spectrum.run(conv_spectrum.get_config("quick"), tmp_path)
    d = tmp_path / "conv_spectrum"
    for png in ("conv_singular_values.png", "conv_inverse.png"):
        assert (d / png).stat().st_size > 0
    m = _load(d)
    assert max(m["fft_vs_dense_max_abs_diff"].values()) < 1e-4
    inv = m["inverse"]
    for case in ("circular", "zero_padding", "stride2_unet"):
        assert inv[case]["pinv"] < 1e-4 < 0.01 < inv[case]["transposed_rescaled"], case
    assert inv["stride2_unet"]["transposed_is_adjoint"] < 1e-5
    assert inv["stride2_unet"]["transposed_rescaled"] > 0.3
    assert m["spectra"]["3x3x16x8"]["nullity"] >= m["spectra"]["3x3x16x8"]["n_in"] // 2
    assert all(row["agrees"] for row in m["references"])
