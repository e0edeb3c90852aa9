"""Smoke runs of the seed-study experiments on their quick profile, checking the key numbers."""

import json

from experiments import linear_inversion, sigmoid_inversion


def _read(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_linear_inversion_reproduces_the_seed_value(tmp_path):
    metrics = linear_inversion.run(linear_inversion.get_config("quick"), tmp_path)
    saved = _read(tmp_path / "linear_inversion")
    assert (tmp_path / "linear_inversion" / "linear_inversion.png").stat().st_size > 0
    assert 305.0 <= saved["x0"] <= 320.0
    assert abs(saved["x0"] - saved["x0_closed_form"]) <= 0.01 * abs(saved["x0_closed_form"])
    assert all(row["agrees"] for row in metrics["references"])
    # the recorded path climbs from the start towards the solution
    assert saved["path_x"][0] < saved["path_x"][len(saved["path_x"]) // 2] < saved["x0"] + 1


def test_sigmoid_inversion_statuses(tmp_path):
    metrics = sigmoid_inversion.run(sigmoid_inversion.get_config("quick"), tmp_path)
    rows = {row["y0"]: row for row in _read(tmp_path / "sigmoid_inversion")["targets"]}
    for y0 in (0.1, 0.5, 0.9):
        assert rows[y0]["status"] == "converged"
        assert (
            abs(rows[y0]["x_gradient"] - rows[y0]["x_closed_form"])
            < 1e-2 * rows[y0]["x_closed_form"]
        )
    assert rows[1.2]["closed_form_error"] and rows[1.2]["status"] == "max_steps"
    assert rows[1.2]["residual"] > 0.16
    assert all(row["agrees"] for row in metrics["references"])
