"""Smoke run of the invertible_baselines experiment (quick sizes): the table's fields per model,
the diagnostic, the i-ResNet iteration curves below their bound, and the figures."""

import json
import math

import matplotlib

matplotlib.use("Agg")


def test_invertible_baselines_quick(tmp_path):
    """Two of the five networks (IRevNet; IResNet, whose iterations are plotted) to keep the
    suite's time: each network costs its own compilations (training, memory, inverse)."""
    import dataclasses

    from experiments import invertible_baselines as ib

    networks = ("IRevNet", "IResNet")
    config = dataclasses.replace(ib.get_config("quick"), networks=networks)
    summary = ib.run(config, tmp_path)
    folder = tmp_path / "invertible_baselines"
    saved = json.loads((folder / "metrics.json").read_text())
    for name in (*networks, "UNet", "Decoder"):
        row = saved[name]
        assert {"params", "dice", "round_trip_median", "round_trip_max"} <= set(row)
        assert row["params"] > 0 and row["inverse_seconds"] > 0
        assert row["round_trip_median"] <= row["round_trip_max"]
        assert math.isfinite(row["memory_vs_unet"]) and row["memory_vs_unet"] > 0
    for name in networks:  # exact by construction even after 20 training steps
        assert saved[name]["round_trip_max"] < ib.EXACT and 0 <= saved[name]["dice"] <= 1
        # the float64 conditioning: kappa >= ~1 for these maps, and its float32 floor is kappa u
        kappa = saved[name]["inverse_condition"]
        assert math.isfinite(kappa) and kappa > 0.1
        assert math.isclose(saved[name]["float32_floor"], kappa * 2.0**-24)
    assert saved["IRevNet"]["inverse_penalty"] == 1.0 and saved["IResNet"]["inverse_penalty"] == 0
    assert saved["UNet"]["round_trip_median"] > 1e-2  # the engine approximates
    assert saved["Decoder"]["dice"] is None
    assert saved["inexact"] == []
    curves = saved["iresnet_iterations"]
    assert len(curves) == 4, len(curves)
    assert all(c["below_bound"] for c in curves), [
        (c["below_bound"], c["lipschitz_bound"]) for c in curves
    ]
    assert all(0 < c["lipschitz_bound"] <= 0.9 * (1 + 1e-6) for c in curves)  # float32 √0.9²
    assert [r["quantity"] for r in summary["references"]][1].startswith("every invertible")
    for png in ("iresnet_iterations.png", "summary.png"):
        assert (folder / png).stat().st_size > 0
    assert "| IRevNet |" in (folder / "table.md").read_text()


def test_the_diagnostic_flags_an_inexact_inverse(capsys):
    """A model whose round trip exceeds 1e-4 (or is NaN) is named, warned about and printed:
    an inverse that fails never passes silently."""
    import pytest

    from experiments import invertible_baselines as ib

    rows = {n: {"round_trip_max": 1e-6} for n in (*ib.INVERTIBLE, *ib.ABLATIONS)}
    rows["UNet"] = {"round_trip_max": 0.5}  # not invertible: not flagged
    assert ib.flag_inexact(rows) == []
    rows["Glow"]["round_trip_max"] = 2e-4
    rows["IResNet"]["round_trip_max"] = float("nan")
    rows["Glow[affine, no penalty]"]["round_trip_max"] = 3e-4  # ablations are checked too
    flagged = ["Glow", "IResNet", "Glow[affine, no penalty]"]
    with pytest.warns(RuntimeWarning, match=r"'IResNet', 'Glow\[affine, no penalty\]'\] is not"):
        assert ib.flag_inexact(rows) == flagged
    assert "not exact" in capsys.readouterr().err


def test_the_table_marks_an_inexact_row():
    """The report's table names a flagged model in its round-trip column, not only stderr."""
    from experiments import invertible_baselines as ib

    row = {
        "params": 10,
        "dice": 0.97,
        "round_trip_median": 1e-6,
        "round_trip_max": 2e-6,
        "inverse_seconds": 0.01,
        "train_step_bytes": 2**20,
        "memory_vs_unet": 0.5,
        "inverse_condition": 40.0,
        "float32_floor": 40.0 * 2.0**-24,
    }
    rows = {"Glow": row, "Glow[affine, no penalty]": {**row, "round_trip_max": 2e-4}}
    lines = ib._table(rows, ["Glow[affine, no penalty]"]).splitlines()
    assert "2.00e-04 **(inexact)**" in lines[-1] and "inexact" not in lines[-2]
    assert "| 40 | 2.4e-06 |" in lines[-2]
