"""invert_dataset in one process: chunks equal invert_batch, resume loses nothing and changes
nothing, corrupted or foreign files are never mixed in, every kind of targets input works.

Comparisons are bitwise: a resumed chunk is solved by the same program on the same rows."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inversion
from inversion import invert_dataset, load_dataset_result

ROOT = pathlib.Path(__file__).resolve().parents[2]
A = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
TARGETS = np.asarray(
    jax.vmap(lambda x: jnp.tanh(A @ x))(
        jnp.asarray(np.random.default_rng(1).normal(size=(11, 3)), jnp.float32)
    )
)
KW = dict(
    starts=inversion.Starts(x_shape=(3,)),
    steps=15,
    solver=inversion.solvers.Optax(optax.adam(0.05)),
    execution=inversion.Execution(progress=False),
)


def fn(x):
    return jnp.tanh(A @ x)


def fields(r):
    return {k: np.asarray(getattr(r, k)) for k in ("x", "loss", "residual", "steps", "status_code")}


def assert_same(a, b):
    for k, v in fields(a).items():
        np.testing.assert_array_equal(v, fields(b)[k], err_msg=k)


def test_chunks_equal_invert_batch_on_the_same_rows(tmp_path):
    res = invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    assert res.complete and res.n_rows == 11 and list(res.done) == list(range(11))
    kw = {k: v for k, v in KW.items() if k != "progress"}
    for start in (0, 4, 8):
        ref = inversion.invert_batch(fn, TARGETS[start : start + 4], **kw)
        np.testing.assert_array_equal(res.x[start : start + 4], np.asarray(ref.x))
        np.testing.assert_array_equal(res.status[start : start + 4], ref.status)
    again = load_dataset_result(tmp_path)
    assert_same(again, res)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [".lock", "chunk-000000-p000.npz", "chunk-000001-p000.npz",
                     "chunk-000002-p000.npz", "manifest.json"]  # fmt: skip
    with np.load(tmp_path / "chunk-000001-p000.npz") as data:  # readable with NumPy alone
        np.testing.assert_array_equal(data["rows"], [4, 5, 6, 7])


def test_resume_after_an_interruption_recomputes_only_what_is_missing(tmp_path):
    full = invert_dataset(fn, TARGETS, out_dir=tmp_path / "full", chunk_rows=4, **KW)

    class Interrupt:  # the targets stream is cut after two chunks (Ctrl-C mid-run)
        def __iter__(self):
            yield TARGETS[:4]
            yield TARGETS[4:8]
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invert_dataset(fn, Interrupt(), out_dir=tmp_path / "cut", chunk_rows=4, **KW)
    partial = load_dataset_result(tmp_path / "cut")
    assert not partial.complete and list(partial.done) == list(range(8))
    np.testing.assert_array_equal(partial.x, full.x[:8])
    kept = (tmp_path / "cut" / "chunk-000000-p000.npz").stat().st_mtime_ns
    resumed = invert_dataset(fn, TARGETS, out_dir=tmp_path / "cut", chunk_rows=4, **KW)
    assert resumed.complete
    assert_same(resumed, full)
    assert (tmp_path / "cut" / "chunk-000000-p000.npz").stat().st_mtime_ns == kept  # not redone


def test_a_corrupted_chunk_is_detected_and_solved_again(tmp_path):
    full = invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    path = tmp_path / "chunk-000001-p000.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="chunk 1"):
        again = invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    assert_same(again, full)


def test_other_options_or_other_targets_are_refused(tmp_path):
    invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    for change in (
        dict(steps=16),
        dict(solver=inversion.solvers.Optax(optax.adam(0.06))),
        dict(starts=inversion.Starts(x_shape=(3,), key=jax.random.key(0))),
    ):
        with pytest.raises(ValueError, match="different options"):
            invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **{**KW, **change})
    with pytest.raises(ValueError, match="different options"):
        invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=5, **KW)
    B = A * 1.01  # the same program with other weights: other constants, other fingerprint
    with pytest.raises(ValueError, match="different options"):
        invert_dataset(lambda x: jnp.tanh(B @ x), TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    with pytest.raises(ValueError, match="other targets"):
        invert_dataset(fn, TARGETS[::-1].copy(), out_dir=tmp_path, chunk_rows=4, **KW)


def test_iterables_and_memmaps_give_the_same_results(tmp_path):
    ref = invert_dataset(fn, TARGETS, out_dir=tmp_path / "a", chunk_rows=4, **KW)
    uneven = [TARGETS[:3], TARGETS[3:4], TARGETS[4:10], TARGETS[10:]]
    it = invert_dataset(fn, iter(uneven), out_dir=tmp_path / "b", chunk_rows=4, **KW)
    assert it.complete and it.n_rows == 11
    assert_same(it, ref)
    np.save(tmp_path / "t.npy", TARGETS)
    mm = invert_dataset(fn, np.load(tmp_path / "t.npy", mmap_mode="r"), out_dir=tmp_path / "c",
                        chunk_rows=4, **KW)  # fmt: skip
    assert_same(mm, ref)


def test_one_start_per_target_is_chunked_with_the_targets(tmp_path):
    x0 = np.asarray(np.random.default_rng(5).normal(size=(11, 3)), np.float32)
    kw = {k: v for k, v in KW.items() if k != "x_shape"}
    res = invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, x0=x0, **kw)
    ref = inversion.invert_batch(fn, TARGETS[4:8], x0=x0[4:8], steps=15, solver=inversion.solvers.Optax(optax.adam(0.05)))  # fmt: skip
    np.testing.assert_array_equal(res.x[4:8], np.asarray(ref.x))
    with pytest.raises(ValueError, match="one per target"):
        invert_dataset(fn, TARGETS, out_dir=tmp_path / "x", chunk_rows=4, x0=x0[:5], **kw)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="chunk_rows"):
        invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=0, **KW)
    with pytest.raises(TypeError, match="unexpected keyword"):
        invert_dataset(fn, TARGETS, out_dir=tmp_path, stepz=3, **KW)
    with pytest.raises(ValueError, match="no rows"):
        invert_dataset(fn, iter([]), out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="manifest"):
        load_dataset_result(tmp_path / "nothing")


KILLED = textwrap.dedent(
    """
    import sys, time
    from inversion import cpu_devices
    cpu_devices.configure()  # as tests/conftest.py: the same devices, the same bits
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_dataset import fn, TARGETS, KW
    import inversion

    def slow(batches):  # one chunk at a time, slowly, so the kill lands mid-run
        for b in batches:
            yield b
            time.sleep(0.5)

    inversion.invert_dataset(fn, slow([TARGETS[i:i + 2] for i in range(0, 11, 2)]),
                             out_dir=sys.argv[1], chunk_rows=2, **KW)
    """
)


def test_sigkill_mid_run_loses_at_most_the_chunk_in_flight(tmp_path):
    ref = invert_dataset(fn, TARGETS, out_dir=tmp_path / "ref", chunk_rows=2, **KW)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(out), str(pathlib.Path(__file__).parent)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = out / "manifest.json"
            if manifest.exists() and len(json.loads(manifest.read_text())["chunks"]) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    partial = load_dataset_result(out)
    assert 2 <= len(partial.done) // 2 < 6 and not partial.complete
    resumed = invert_dataset(fn, TARGETS, out_dir=out, chunk_rows=2, **KW)
    assert_same(resumed, ref)


def test_a_shared_start_equals_the_same_start_given_per_target(tmp_path):
    start = np.asarray([0.2, -0.1, 0.3], np.float32)
    kw = {k: v for k, v in KW.items() if k != "x_shape"}
    shared = invert_dataset(fn, iter([TARGETS]), out_dir=tmp_path / "s", chunk_rows=4,
                            x0_shared=start, **kw)  # fmt: skip
    each = invert_dataset(fn, TARGETS, out_dir=tmp_path / "e", chunk_rows=4,
                          x0=np.broadcast_to(start, (11, 3)).copy(), **kw)  # fmt: skip
    assert_same(shared, each)
    with pytest.raises(ValueError, match="not both"):
        invert_dataset(fn, TARGETS, out_dir=tmp_path / "b", x0_shared=start,
                       x0=np.zeros((11, 3), np.float32), **kw)  # fmt: skip


# One writer at a time.


def test_a_second_writer_is_refused_at_once_and_writes_nothing(tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    traced = []

    def spy(x):
        traced.append(1)
        return fn(x)

    with open(out / ".lock", "a+b") as holder:  # another run holds the lock
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="being written by another run") as err:
            invert_dataset(spy, TARGETS, out_dir=out, chunk_rows=4, **{**KW, "steps": 16})
        assert str(out) in str(err.value)
        assert not traced and sorted(p.name for p in out.iterdir()) == [".lock"]
    res = invert_dataset(fn, TARGETS, out_dir=out, chunk_rows=4, **KW)  # released: works
    assert res.complete


def test_two_concurrent_runs_with_other_steps_never_mix(tmp_path):
    """A second run started while the first is mid-run (here from inside the first's stream
    of targets: another open file, as another process would have) is refused; the first ends
    with its own results only."""
    ref = invert_dataset(fn, TARGETS, out_dir=tmp_path / "ref", chunk_rows=4, **KW)
    out = tmp_path / "out"
    refused = []

    def batches():
        yield TARGETS[:4]
        with pytest.raises(ValueError, match="being written by another run") as err:
            invert_dataset(fn, TARGETS, out_dir=out, chunk_rows=4, **{**KW, "steps": 16})
        refused.append(str(err.value))
        yield TARGETS[4:]

    res = invert_dataset(fn, batches(), out_dir=out, chunk_rows=4, **KW)
    assert refused and str(out) in refused[0]
    assert res.complete
    assert_same(res, ref)
    assert_same(load_dataset_result(out), ref)


def test_a_run_that_loses_its_manifest_to_another_writer_stops(tmp_path):
    """Without flock (some network file systems), the run id in the manifest still keeps two
    writers apart: a run whose manifest was claimed by another stops at its next write."""
    out = tmp_path / "out"

    def batches():
        yield TARGETS[:4]
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["writer"] = "another-run"
        (out / "manifest.json").write_text(json.dumps(manifest))
        yield TARGETS[4:8]

    with pytest.raises(ValueError, match="taken over by another run"):
        invert_dataset(fn, batches(), out_dir=out, chunk_rows=4, **KW)
    assert json.loads((out / "manifest.json").read_text())["writer"] == "another-run"


# Checks on load.


def _edit_manifest(out, change):
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_of_another_version_is_refused(tmp_path):
    invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    _edit_manifest(tmp_path, lambda m: m.update(version=99))
    with pytest.raises(ValueError, match="version 99; this code reads version 1"):
        load_dataset_result(tmp_path)
    with pytest.raises(ValueError, match="version 99"):
        invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)


def test_overlapping_chunks_are_refused_and_gaps_are_missing_rows(tmp_path):
    invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    saved = (tmp_path / "manifest.json").read_text()
    _edit_manifest(tmp_path, lambda m: m["chunks"]["1"].update(rows=[2, 6]))
    with pytest.raises(ValueError, match=r"chunks 0 \(rows 0..3\) and 1 \(rows 2..5\) overlap"):
        load_dataset_result(tmp_path)
    (tmp_path / "manifest.json").write_text(saved)
    _edit_manifest(tmp_path, lambda m: m["chunks"].pop("1"))  # a gap, still marked complete
    res = load_dataset_result(tmp_path)
    assert not res.complete
    assert list(res.missing) == [4, 5, 6, 7] and list(res.done) == [0, 1, 2, 3, 8, 9, 10]
    assert res.x.shape == (7, 3)


def test_another_runs_chunk_file_is_refused_on_load(tmp_path):
    invert_dataset(fn, TARGETS, out_dir=tmp_path / "a", chunk_rows=4, **KW)
    invert_dataset(fn, TARGETS, out_dir=tmp_path / "b", chunk_rows=4, **{**KW, "steps": 16})
    name = "chunk-000001-p000.npz"
    (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    res = load_dataset_result(tmp_path / "a")
    assert res.complete  # cheap: the files exist; their contents are checked when read
    for field in ("x", "status"):
        with pytest.raises(ValueError, match=f"{name} does not match its SHA-256"):
            getattr(res, field)


def test_a_deleted_chunk_file_makes_the_result_incomplete(tmp_path):
    full = invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    ref = fields(full)
    (tmp_path / "chunk-000002-p000.npz").unlink()
    assert not full.complete and list(full.missing) == [8, 9, 10]
    res = load_dataset_result(tmp_path)
    assert not res.complete and list(res.done) == list(range(8))
    np.testing.assert_array_equal(res.x, ref["x"][:8])
    with pytest.warns(RuntimeWarning, match="chunk 2"):
        again = invert_dataset(fn, TARGETS, out_dir=tmp_path, chunk_rows=4, **KW)
    assert again.complete and len(again.missing) == 0
    np.testing.assert_array_equal(again.x, ref["x"])


# Errors before work, naming what is wrong.


def _spy():
    traced = []

    def spy(x):
        traced.append(1)
        return fn(x)

    return spy, traced


def test_an_out_dir_that_cannot_be_written_is_refused_before_anything_is_traced(tmp_path):
    spy, traced = _spy()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out_dir .*file/out cannot be created or written"):
        invert_dataset(spy, TARGETS, out_dir=tmp_path / "file" / "out", chunk_rows=4, **KW)
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        (ro / ".lock").touch()
        ro.chmod(0o555)
        try:
            with pytest.raises(ValueError, match="out_dir .*ro is not writable"):
                invert_dataset(spy, TARGETS, out_dir=ro, chunk_rows=4, **KW)
        finally:
            ro.chmod(0o755)
    assert not traced


def test_batches_of_other_widths_are_named(tmp_path):
    batches = [TARGETS[:3], TARGETS[3:5], np.zeros((2, 5), np.float32)]
    with pytest.raises(ValueError, match=r"batch 2 has shape \(2, 5\), batch 0 has \(3, 4\)"):
        invert_dataset(fn, iter(batches), out_dir=tmp_path, chunk_rows=4, **KW)


def test_a_non_finite_target_names_its_row(tmp_path):
    bad = TARGETS.copy()
    bad[9, 2] = np.nan
    with pytest.raises(ValueError, match="targets row 9 holds a non-finite value"):
        invert_dataset(fn, bad, out_dir=tmp_path / "a", chunk_rows=4, **KW)
    with pytest.raises(ValueError, match="targets row 9 holds a non-finite value"):
        invert_dataset(fn, iter([bad[:6], bad[6:]]), out_dir=tmp_path / "b", chunk_rows=4, **KW)


def test_a_rerun_on_more_rows_keeps_a_valid_manifest_throughout(tmp_path):
    invert_dataset(fn, TARGETS[:8], out_dir=tmp_path, chunk_rows=4, **KW)
    seen = []

    def batches():  # a loader mid-run sees a valid, incomplete manifest
        yield TARGETS[:8]
        seen.append(load_dataset_result(tmp_path).complete)
        yield TARGETS[8:]

    res = invert_dataset(fn, batches(), out_dir=tmp_path, chunk_rows=4, **KW)
    assert seen == [False] and res.complete and res.n_rows == 11
