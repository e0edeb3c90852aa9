"""The reproduce command: runs the chosen experiments and writes one report.

Profile and ``--set`` pass-through are tested without running experiments in test_config.py.
"""

import json

import pytest

from experiments import __main__ as reproduce_cli


def test_report_lists_references_figures_and_failures(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "figure.png").write_bytes(b"png")
    (tmp_path / "good" / "table.md").write_text("| model | dice |\n| --- | --- |\n| A | 0.9 |\n")
    outcomes = {
        "good": {
            "seconds": 1.5,
            "config": {"profile": "quick", "steps": 200, "overrides": {"steps": 200}},
            "metrics": {
                "x0": 310.6,
                "references": [
                    {"quantity": "x0", "reference": "≈ 312", "reproduced": 310.6, "agrees": True},
                    {"quantity": "gap", "reference": "< 1", "reproduced": 3.0, "agrees": False},
                ],
            },
        },
        "bad": {"seconds": 0.1, "error": "Traceback ...\nValueError: boom"},
    }
    provenance = {
        "git": {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": True},
        "versions": {"jax": "0.0.1"},
    }
    text = reproduce_cli.write_report(
        tmp_path, outcomes, profile="quick", provenance=provenance
    ).read_text()
    assert "Profile: quick. Commit: 0123456789ab (dirty)." in text
    assert "Versions: jax 0.0.1." in text
    assert "Config: profile quick: steps=200; set: steps=200." in text
    assert "| good | x0 | ≈ 312 | 310.6 | yes |" in text
    assert "| good | gap | < 1 | 3 | **no** |" in text
    assert "![figure](good/figure.png)" in text
    assert "| model | dice |\n| --- | --- |\n| A | 0.9 |\n" in text  # the experiment's table
    assert "ValueError: boom" in text and "**Failed:**" in text


def test_reproduce_runs_selected_experiments(tmp_path):
    code = reproduce_cli.main(
        ["reproduce", "--out", str(tmp_path), "--quick", "--only", "pooling_loss"]
    )
    assert code == 0
    report = (tmp_path / "report.md").read_text()
    assert "## pooling_loss" in report and "| pooling_loss |" in report
    assert "Profile: quick. Commit: " in report and "Config: profile quick: " in report
    saved = json.loads((tmp_path / "pooling_loss" / "metrics.json").read_text())
    assert saved["config"] == {"profile": "quick", "image_size": 32, "steps": 200, "overrides": {}}
    assert {"versions", "git", "backend"} <= set(saved["provenance"])


def test_unknown_experiment_is_refused():
    with pytest.raises(SystemExit):
        reproduce_cli.main(["reproduce", "--only", "no_such_experiment"])
