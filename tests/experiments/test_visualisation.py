"""Smoke run of experiments.visualisation on the quick profile (quick-trained seed U-Net)."""

import json

import matplotlib

matplotlib.use("Agg")

from experiments import visualisation


def test_visualisation_quick_writes_figures_and_statistics(tmp_path):
    config = visualisation.get_config("quick")
    metrics = visualisation.run(config, tmp_path)
    folder = tmp_path / visualisation.NAME
    inputs = ["scene0", "phantom", "camera"]
    assert metrics["inputs"] == inputs
    expected = {"kernels_trained.png", "kernels_init.png", "kernels_change.png"}
    expected.add("weight_histograms.png")
    for model in ("trained", "init"):
        expected |= {f"activations_{model}_{name}.png" for name in inputs}
        expected |= {f"first_layer_{model}.png", f"bottleneck_{model}.png"}
    assert set(metrics["figures"]) == expected
    for name in expected:
        assert (folder / name).stat().st_size > 1000, name
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["config"]["profile"] == "quick"
    layers = metrics["layers"]
    assert layers[0] == "enc1" and layers[-1] == "out" and "cat2" in layers
    for model in ("trained", "init"):
        stats = metrics["activation_statistics"][model]
        assert list(stats) == layers
        for name, row in stats.items():
            assert {"mean", "std", "zero_fraction", "shape"} <= set(row)
            assert row["std"] >= 0 and 0 <= row["zero_fraction"] <= 1
            if name in visualisation.RELU_LAYERS:
                assert row["dead_relu_fraction"] == row["zero_fraction"]
                assert row["mean"] >= 0
            else:
                assert "dead_relu_fraction" not in row
        assert stats["enc1"]["shape"] == [32, 32, 16]
    assert all(row["agrees"] for row in metrics["references"])
