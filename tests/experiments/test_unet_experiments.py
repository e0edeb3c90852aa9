"""Smoke runs of unet_inversion and preimage_spread (quick sizes): files and invariants.

The experiments train (or restore) U-Nets through the model cache, one temporary folder per
test run shared by the xdist workers (``conftest.py``), so the quick U-Nets are trained once per
run and shared by all experiment tests; set ``INVERSION_CACHE`` yourself to reuse a cache
across sessions.
"""

import json
import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")


def _load(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_preimage_spread_quick(tmp_path):
    from experiments import preimage_spread

    returned = preimage_spread.run(preimage_spread.get_config("quick"), tmp_path)
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
    null = jac["nullity"]
    assert jac["n_in"] == 256 and 0 <= null["exact"] <= null["float32"] <= null["8-bit"] <= 256
    assert jac["sigma_max"] >= jac["sigma_min"] > 0 or null["exact"] > 0
    # triangle inequality: two restarts are no farther apart than their distances to x0 allow
    assert s["pairwise_distance_median"] <= 2 * max(s["distance_to_true"]) + 1e-9
    w = m["weights"]
    assert list(returned["weights"]) == [
        "enc1.conv1",
        "enc2.conv1",
        "bottleneck.conv1",
        "up2",
        "dec2.conv1",
        "up1",
        "out",
    ]
    assert sum(v["count"] for v in w.values()) == 52_337
    ref = m["references"][0]
    assert ref["agrees"] == (m["residual_bound_met"] and m["differ_from_true_beyond_noise"])
    # the U-Net output rows are those of unet_layerwise: one verdict, one row per precision
    from experiments import unet_verdict

    assert m["references"][1:] == unet_verdict.references(m["output_verdict"])
    assert [r["agrees"] for r in m["references"][1:]] == [
        all(n > 0 for n in m["output_verdict"]["per_precision"][p]["skips"]["lossy_scenes"])
        for p in ("exact", "float32", "8-bit")
    ]


def test_unet_inversion_quick(tmp_path):
    from experiments import unet_inversion

    metrics = unet_inversion.run(unet_inversion.get_config("quick"), tmp_path)
    folder = tmp_path / "unet_inversion"
    assert (folder / "reconstructions.png").exists()
    assert (folder / "residual_vs_input_error.png").exists()
    saved = _load(folder)
    n, r = saved["config"]["targets"], saved["config"]["restarts"]
    residual = np.asarray(saved["output_residual"])
    error = np.asarray(saved["input_relative_error"])
    assert residual.shape == error.shape == (n, r)
    assert np.all(np.isfinite(residual)) and np.all(residual < 1.0)
    assert np.all((error > 0) & np.isfinite(error))
    assert saved["unet_test_dice"] >= 0.9
    for row in metrics["references"]:
        assert isinstance(row["agrees"], bool)
