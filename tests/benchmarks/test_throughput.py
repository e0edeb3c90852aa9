"""Smoke test of the throughput benchmark's measuring function (no timing assertions)."""

import json
import math

import pytest

from benchmarks import throughput


def test_measure_reports_every_field_positive():
    out = throughput.measure(
        size=16, batches=(2,), steps=3, repeats=1, matmul_n=128, log=lambda _: None
    )
    assert out["machine"]["backend"] and out["machine"]["cpu"] and out["machine"]["cores"] >= 1
    assert out["matmul"]["before"]["gflops"] > 0 and out["matmul"]["after"]["gflops"] > 0
    (row,) = out["rows"]
    assert row["batch"] == 2 and row["loop"] == "auto"
    for field in (
        "seconds",
        "targets_per_s",
        "ms_per_step",
        "flops_per_step",
        "gflops",
        "peak_fraction",
        "peak_memory_bytes",
    ):
        assert math.isfinite(row[field]) and row[field] > 0, (field, row[field])
    for field in (
        "compile_s",
        "memory_increase_bytes",
        "memory_per_target_bytes",
        "output_residual_median",
    ):
        assert math.isfinite(row[field]) and row[field] >= 0, (field, row[field])
    # the figures are consistent with each other
    assert row["targets_per_s"] == pytest.approx(2 / row["seconds"])
    assert row["ms_per_step"] == pytest.approx(1e3 * row["seconds"] / 3)
    assert row["gflops"] == pytest.approx(row["flops_per_step"] * 3 / row["seconds"] / 1e9)
    json.dumps(out)  # what --json writes


def test_bad_options_raise_before_measuring():
    with pytest.raises(ValueError, match="unknown loop 'fast'"):
        throughput.measure(size=16, batches=(2,), steps=3, loops=("fast",), log=lambda _: None)
    with pytest.raises(ValueError, match="size a multiple of 4"):
        throughput.measure(size=18, batches=(2,), steps=3, log=lambda _: None)
    with pytest.raises(ValueError, match="unknown model"):
        throughput.build("resnet", 16, 2)
