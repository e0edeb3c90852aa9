"""Smoke run of unet_layerwise (quick sizes): layers, ranks, classes, reference rows. Its
algorithm, ``inversion.analysis.layerwise``, is tested in tests/inversion/analysis/.

The experiments train (or restore) U-Nets through the model cache, one temporary folder per
test run shared by the xdist workers (``conftest.py``), so the quick U-Nets are trained once per
run and shared by all experiment tests; set ``INVERSION_CACHE`` yourself to reuse a cache
across sessions.
"""

import json
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from unet_layer_names import NO_SKIP_LAYERS, SEED_LAYERS  # noqa: E402


def _load(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_unet_layerwise_quick(tmp_path):
    from experiments import unet_layerwise

    returned = unet_layerwise.run(unet_layerwise.get_config("quick"), tmp_path)
    d = tmp_path / "unet_layerwise"
    for png in ("layerwise_error.png", "layerwise_rank.png", "layerwise_reconstructions.png"):
        assert (d / png).stat().st_size > 0
    m = _load(d)
    assert m["skips"]["layers"] == SEED_LAYERS == returned["skips"]["layers"]
    assert m["no_skips"]["layers"] == NO_SKIP_LAYERS
    assert m["config"]["profile"] == "quick" and m["config"]["train_profile"] == "quick"
    n_img = m["config"]["images"]
    for variant in ("skips", "no_skips"):
        res = m[variant]
        assert set(res["per_layer"]) == set(res["layers"])
        for name, row in res["per_layer"].items():
            assert row["n_in"] == 256, name
            # coarser precision can only lose more directions
            assert 0 <= row["nullity"] <= row["nullity_float32"] <= row["nullity_8bit"] <= 256
            assert row["nullity_8bit"] >= max(0, row["n_in"] - row["n_out"])
            assert math.isfinite(row["feature_error"]) and row["feature_error"] >= 0
            assert 0 <= row["relative_error"] < 2 and len(row["psnr_per_image"]) == n_img
            assert all(len(v) == n_img for v in row["nullity_per_image"].values())
        # lossy, lost below float32 and optimiser-limited are disjoint classes
        lossy, f32 = set(res["lossy"]), set(res["lost_below_float32"])
        assert lossy.isdisjoint(res["optimiser_limited"]) and lossy.isdisjoint(f32)
        assert f32.isdisjoint(res["optimiser_limited"])
        assert lossy == {n for n, r in res["per_layer"].items() if r["nullity"] > 0}
        for name in res["optimiser_limited"]:
            assert res["per_layer"][name]["relative_error"] > m["constants"]["failed_error"]
        # the first conv (16 channels of 3x3, ReLU) keeps the input: recovered almost exactly
        enc1 = res["per_layer"]["enc1"]
        assert enc1["nullity"] == 0 and enc1["relative_error"] < 1e-3 and enc1["psnr"] > 50
        # the output has one channel: its Jacobian is square (256 x 256)
        assert res["per_layer"]["out"]["n_out"] == 256
    # enc2 is the same activation in cat2 (concat of up2 and enc2): rank cannot drop
    pl = m["skips"]["per_layer"]
    for p in ("nullity", "nullity_float32"):
        assert pl["cat2"][p] <= pl["enc2"][p] and pl["cat1"][p] <= pl["enc1"][p]
    # three reference rows, one per precision, from the shared output verdict
    refs = m["references"]
    assert len(refs) == 3
    verdict = m["output_verdict"]
    for ref, p in zip(refs, ("exact", "float32", "8-bit"), strict=True):
        assert f"at {p} precision" in ref["quantity"]
        lossy = verdict["per_precision"][p]["skips"]["lossy_scenes"]
        assert ref["agrees"] == all(n > 0 for n in lossy)
        assert ref["reproduced"]["lossy_scenes_per_key"] == lossy
