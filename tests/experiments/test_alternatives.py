"""Smoke run of the alternatives experiment (quick sizes): flow exact, the others approximate."""

import json
import math

import matplotlib

matplotlib.use("Agg")


def _load(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_alternatives_quick(tmp_path):
    from experiments import alternatives

    summary = alternatives.run(alternatives.get_config("quick"), tmp_path)
    rows = _load(tmp_path / "alternatives")["methods"]
    assert set(rows) == {
        "optimisation (U-Net)",
        "learned inverse (U-Net)",
        "flow inverse",
        "optimisation (flow)",
    }
    flow = rows["flow inverse"]
    assert flow["input_relative_error"] < 1e-4 and flow["output_residual"] < 1e-4
    assert flow["input_psnr_db"] > 60
    for name in ("learned inverse (U-Net)", "optimisation (U-Net)"):
        assert rows[name]["input_relative_error"] > 1e-2
        assert math.isfinite(rows[name]["output_residual"])
    for row in rows.values():
        assert 0.0 <= row["forward_dice"] <= 1.0
    assert all(r["agrees"] for r in summary["references"])
    assert (tmp_path / "alternatives" / "reconstructions.png").stat().st_size > 0
