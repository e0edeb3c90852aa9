"""Smoke run of layer_probes (quick sizes) and the probe on the seed U-Net's own logits.

The quick U-Nets come from the run's model cache (``conftest.py``), shared with the other
experiment tests of the run.
"""

import json
import math
import pathlib
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from unet_layer_names import NO_SKIP_LAYERS, SEED_LAYERS  # noqa: E402


def test_probe_on_the_seed_unet_output_reaches_its_own_dice():
    """``w = 1, b = 0`` on the output logits is a probe, so the trained probe's held-out dice is
    within 0.02 of the U-Net's own (quick U-Net, 128 training scenes, 64 held out)."""
    import models
    from experiments.common import trained_seed_unet
    from models.probes import evaluate_probe, train_probe

    model, test_set, _ = trained_seed_unet(train_profile="quick")
    train = models.data.synthetic_scenes(jax.random.key(0), 128, size=32)
    fn, params = models.feature_fn(model, "out")
    fn = jax.jit(fn)
    z_train, z_test = fn(params, train.images), fn(params, test_set.images[:64])
    own = float(np.mean(np.asarray(models.dice(z_test, test_set.masks[:64]))))
    probe = train_probe(z_train, train.masks, steps=300, learning_rate=0.05)
    got = evaluate_probe(probe, z_test, test_set.masks[:64])["dice_mean"]
    assert own > 0.9, own
    assert abs(got - own) <= 0.02, (got, own)


def test_layer_probes_quick(tmp_path):
    from experiments import layer_probes

    returned = layer_probes.run(layer_probes.get_config("quick"), tmp_path)
    d = tmp_path / "layer_probes"
    pngs = ("dice", "iou", "examples", "decoders")
    for png in (f"layer_probes_{name}.png" for name in pngs):
        assert (d / png).stat().st_size > 0, png
    m = json.loads((d / "metrics.json").read_text())
    assert m["skips"]["layers"] == SEED_LAYERS == returned["skips"]["layers"]
    assert m["no_skips"]["layers"] == NO_SKIP_LAYERS
    assert m["config"]["profile"] == "quick" and m["config"]["train_profile"] == "quick"
    n_test = m["config"]["probe_test"]
    for variant in ("skips", "no_skips"):
        res = m[variant]
        for task in ("scenes", "phantoms"):
            rows = res[task]["per_layer"]
            assert set(rows) == set(res["layers"])
            for name, row in rows.items():
                assert 0 <= row["dice"] <= 1 and 0 <= row["iou"] <= row["dice"] + 1e-6, name
                assert len(row["dice_per_image"]) == len(row["iou_per_image"]) == n_test
                assert math.isfinite(row["dice_std"]) and row["dice_std"] >= 0
            assert 0 <= res[task]["own_output"]["dice"] <= 1
        # the probe on the logits can copy them: never much worse than the output itself
        scenes = res["scenes"]
        assert scenes["per_layer"]["out"]["dice"] >= scenes["own_output"]["dice"] - 0.02
        for name, cert in res["certificate"].items():
            assert cert["n_in"] == 256, name
            assert 0 <= cert["nullity"] <= cert["nullity_float32"] <= cert["nullity_8bit"]
    for task in ("scenes", "phantoms"):
        assert 0 <= m["input_probe"][task]["dice"] <= 1
    # learned inverses of the seed U-Net's layers; without unet_layerwise in the same folder
    # there is no optimisation to compare with, and no reference row for it
    panel = m["learned_inverses"]
    quick = layer_probes.get_config("quick").decoder_layers  # a subset: one compile, smaller
    assert set(panel["per_layer"]) == set(quick) and set(quick) < set(SEED_LAYERS)
    assert panel["certificate_source"] == "layer_probes" and panel["test_crops"] == 2
    for name, row in panel["per_layer"].items():
        assert math.isfinite(row["decoder_psnr"]) and row["decoder_psnr"] > 0, name
        assert len(row["decoder_psnr_per_image"]) == 2 and row["optimisation_psnr"] is None
        assert 0 <= row["visible_8bit"] <= row["visible_float32"] <= row["visible_exact"] <= 1
    assert panel["per_layer"]["bottleneck"]["lossy_or_ill_conditioned"]  # dead ReLUs at 4x4
    refs = m["references"]
    assert len(refs) == 2 and all(isinstance(r["agrees"], bool) for r in refs)
    assert refs[0]["reproduced"]["early"] >= 0 and refs[0]["reproduced"]["late"] >= 0


def test_decoder_reference_row():
    """The row agrees only if the decoder wins on every lossy or ill-conditioned layer and
    optimisation on every other one."""
    from experiments.layer_probes import decoder_reference

    def panel(wins_hard, wins_easy):
        row = lambda hard, dec, opt: {  # noqa: E731
            "lossy_or_ill_conditioned": hard,
            "decoder_psnr": dec,
            "optimisation_psnr": opt,
        }
        return {
            "per_layer": {
                "a": row(True, 20.0, 10.0 if wins_hard else 30.0),
                "b": row(False, 20.0, 40.0 if not wins_easy else 15.0),
            }
        }

    assert decoder_reference(panel(True, False))["agrees"]
    got = decoder_reference(panel(False, False))
    assert not got["agrees"] and got["reproduced"]["decoder_wins_there"] == []
    assert not decoder_reference(panel(True, True))["agrees"]
    no_opt = panel(True, False)
    no_opt["per_layer"]["a"]["optimisation_psnr"] = None
    assert decoder_reference(no_opt) is None
