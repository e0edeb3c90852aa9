"""The invert_many launcher: --local-processes 2 on one machine gives the bits of one process,
and a second run resumes (nothing left to do) instead of starting over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import inversion
from experiments import invert_many

ROOT = Path(__file__).resolve().parents[2]


def test_two_local_processes_match_one_and_resume(tmp_path):
    args = ["--targets", "12", "--quick", "--chunk-rows", "4", "--steps", "5", "--no-progress"]
    assert invert_many.main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.invert_many", *args, "--out", str(tmp_path / "two"),
           "--local-processes", "2", "--timeout", "240"]  # fmt: skip
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=300)
    one, two = (inversion.load_dataset_result(tmp_path / n) for n in ("one", "two"))
    assert one.complete and two.complete and two.manifest["processes"] == 2
    np.testing.assert_array_equal(one.x, two.x)
    np.testing.assert_array_equal(one.residual, two.residual)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["targets"] == 12
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "one").glob("chunk-*"))
    assert invert_many.main([*args, "--out", str(tmp_path / "one")]) == 0  # resumes: no work
    after = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "one").glob("chunk-*"))
    assert before == after


def test_bad_process_options_are_refused():
    with pytest.raises(SystemExit):
        invert_many.main(["--targets", "4", "--out", "x", "--num-processes", "2"])
    with pytest.raises(SystemExit):
        invert_many.main(["--targets", "0", "--out", "x"])
    with pytest.raises(SystemExit):
        invert_many.main(["--targets", "4", "--out", "x", "--local-processes", "2",
                          "--distributed"])  # fmt: skip
