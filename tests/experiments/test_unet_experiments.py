"""Smoke runs of the U-Net information-loss experiments (quick sizes): files, layers, invariants.

The experiments train (or restore) U-Nets through the model cache, one temporary folder per
test process (``conftest.py``), so the quick U-Nets are trained once per process and shared by
the tests here; set ``INVERSION_CACHE`` yourself to reuse a cache across sessions.
"""

import json
import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

SEED_LAYERS = ["enc1", "pool1", "enc2", "pool2", "bottleneck", "up2", "cat2", "dec2", "up1",
               "cat1", "out"]
NO_SKIP_LAYERS = ["enc1", "pool1", "enc2", "pool2", "bottleneck", "up2", "dec2", "up1", "out"]


def _load(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_unet_layerwise_quick(tmp_path):
    from experiments import unet_layerwise

    returned = unet_layerwise.run(tmp_path, quick=True)
    d = tmp_path / "unet_layerwise"
    for png in ("layerwise_error.png", "layerwise_rank.png", "layerwise_reconstructions.png"):
        assert (d / png).stat().st_size > 0
    m = _load(d)
    assert m["skips"]["layers"] == SEED_LAYERS == returned["skips"]["layers"]
    assert m["no_skips"]["layers"] == NO_SKIP_LAYERS
    n_img = m["config"]["images"]
    for variant in ("skips", "no_skips"):
        res = m[variant]
        assert set(res["per_layer"]) == set(res["layers"])
        for name, row in res["per_layer"].items():
            assert row["n_in"] == 256, name
            assert 0 <= row["effective_rank"] <= row["rank"] <= min(row["n_in"], row["n_out"])
            assert row["nullity"] == row["n_in"] - row["rank"]
            assert math.isfinite(row["feature_error"]) and row["feature_error"] >= 0
            assert 0 <= row["relative_error"] < 2 and len(row["psnr_per_image"]) == n_img
            assert len(row["jacobian_per_image"]) == n_img
        # every layer is in exactly one of the two classes it can fall into
        assert set(res["lossy"]).isdisjoint(res["optimiser_limited"])
        assert set(res["lossy"]) == {n for n, r in res["per_layer"].items() if r["nullity"] > 0}
        for name in res["optimiser_limited"]:
            assert res["per_layer"][name]["relative_error"] > m["config"]["failed_error"]
        # the first conv (16 channels of 3x3, ReLU) keeps the input: recovered almost exactly
        enc1 = res["per_layer"]["enc1"]
        assert enc1["nullity"] == 0 and enc1["relative_error"] < 1e-3 and enc1["psnr"] > 50
        # the output has one channel: its Jacobian is square (256 x 256)
        assert res["per_layer"]["out"]["n_out"] == 256
    # enc2 is the same activation in cat2 (concat of up2 and enc2): rank cannot drop
    pl = m["skips"]["per_layer"]
    assert pl["cat2"]["rank"] >= pl["enc2"]["rank"] and pl["cat1"]["rank"] >= pl["enc1"]["rank"]
    ref = m["references"][0]
    assert ref["agrees"] == (m["skips"]["per_layer"]["out"]["nullity"] > 0)


def test_layer_selector_loss_equals_normalized_loss():
    """The stacked, one-hot-selected loss equals the normalised loss of the selected layer."""
    import jax.numpy as jnp

    from experiments.unet_layerwise import selected_layer_loss
    from inversion.losses import normalized

    rng = np.random.default_rng(0)
    seg = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2], np.int32)
    pred, target = rng.normal(size=9), rng.normal(size=9)
    loss = selected_layer_loss(seg)
    for layer in range(3):
        sel = seg == layer
        onehot = np.eye(3)[layer]
        got = loss(jnp.asarray(np.r_[pred, 0, 0, 0], jnp.float32),
                   jnp.asarray(np.r_[target, onehot], jnp.float32))
        want = normalized(jnp.asarray(pred[sel]), jnp.asarray(target[sel]))
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_singular_values_match_svd():
    from experiments.unet_layerwise import singular_values

    a = np.random.default_rng(1).normal(size=(40, 6)) @ np.diag([1, 1e-1, 1e-2, 1e-3, 1, 0.0])
    np.testing.assert_allclose(singular_values(a), np.linalg.svd(a, compute_uv=False),
                               rtol=1e-8, atol=1e-10)


def test_preimage_spread_quick(tmp_path):
    from experiments import preimage_spread

    returned = preimage_spread.run(tmp_path, quick=True)
    d = tmp_path / "preimage_spread"
    for png in ("preimage_spread.png", "preimage_convergence.png", "weight_histograms.png"):
        assert (d / png).stat().st_size > 0
    m = _load(d)
    s, cfg = m["spread"], m["config"]
    r = cfg["restarts"]
    assert len(s["residual"]) == len(s["distance_to_true"]) == r
    assert len(s["pairwise_distance"]) == r * (r - 1) // 2
    assert len(s["control_distance_to_true"]) == cfg["controls"]
    assert all(math.isfinite(v) and 0 <= v < 0.05 for v in s["residual"])
    assert s["residual_max"] == pytest.approx(max(s["residual"]))
    assert 0 <= s["pixels_differing_from_true"] <= 1
    assert 0 <= s["pixels_differing_between_restarts"] <= 1
    # restarts from uniform noise end farther from x0 than runs started next to it
    assert s["distance_to_true_median"] > s["control_noise"]
    assert max(s["control_residual"]) < max(s["residual"])
    jac = m["jacobian_at_true"]
    assert jac["rank"] + jac["nullity"] == jac["n_in"] == 256
    assert jac["sigma_max"] >= jac["sigma_min"] > 0 or jac["nullity"] > 0
    # triangle inequality: two restarts are no farther apart than their distances to x0 allow
    assert s["pairwise_distance_median"] <= 2 * max(s["distance_to_true"]) + 1e-9
    w = m["weights"]
    assert list(returned["weights"]) == ["enc1.conv1", "enc2.conv1", "bottleneck.conv1", "up2", "dec2.conv1",
                       "up1", "out"]
    assert sum(v["count"] for v in w.values()) == 52_337
    ref = m["references"][0]
    assert ref["agrees"] == (m["residual_bound_met"] and m["differ_from_true_beyond_noise"])


def test_unet_inversion_quick(tmp_path):
    from experiments import unet_inversion

    metrics = unet_inversion.run(tmp_path, quick=True)
    folder = tmp_path / "unet_inversion"
    assert (folder / "reconstructions.png").exists()
    assert (folder / "residual_vs_input_error.png").exists()
    saved = _load(folder)
    n, r = saved["profile"]["targets"], saved["profile"]["restarts"]
    residual = np.asarray(saved["output_residual"])
    error = np.asarray(saved["input_relative_error"])
    assert residual.shape == error.shape == (n, r)
    assert np.all(np.isfinite(residual)) and np.all(residual < 1.0)
    assert np.all((error > 0) & np.isfinite(error))
    assert saved["unet_test_dice"] >= 0.9
    for row in metrics["references"]:
        assert isinstance(row["agrees"], bool)
