"""invert_dataset across two local processes (jax.distributed, gloo CPU collectives,
coordinator on 127.0.0.1): the same bits as one process with two devices, and a process
killed mid-run loses nothing once the run is repeated. Every process is bounded in time and
killed in the end."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from inversion import invert_dataset, load_dataset_result

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_dataset import KW, TARGETS, assert_same, fn  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 120

WORKER = textwrap.dedent(
    """
    import sys, time
    out, pid, port, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 1)
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, initialization_timeout=60)
    sys.path.insert(0, sys.argv[5])
    from test_dataset import fn, TARGETS, KW
    import inversion

    def batches():
        for i in range(0, 11, 4):
            yield TARGETS[i:i + 4]
            if slow:
                time.sleep(1.0)

    inversion.invert_dataset(fn, batches() if slow else TARGETS, out_dir=out, chunk_rows=4,
                             **KW)
    """
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out, slow=False):
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    here = str(pathlib.Path(__file__).parent)
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(out),
                str(pid),
                str(port),
                "1" if slow else "0",
                here,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for pid in range(2)
    ]


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)


def _wait(procs):
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, out[-3000:]
    finally:
        _kill(procs)


def test_two_processes_give_the_bits_of_one(tmp_path):
    one = invert_dataset(fn, TARGETS, out_dir=tmp_path / "one", chunk_rows=4, **KW)
    _wait(_start(tmp_path / "two"))
    two = load_dataset_result(tmp_path / "two")
    assert two.complete and two.manifest["processes"] == 2
    assert {f for c in two.manifest["chunks"].values() for f in c["files"]} == {
        f"chunk-{c:06d}-p{p:03d}.npz" for c in range(3) for p in range(2)
    }  # each process wrote the rows it computed
    assert_same(two, one)


def test_a_process_killed_mid_run_loses_nothing_after_a_rerun(tmp_path):
    one = invert_dataset(fn, TARGETS, out_dir=tmp_path / "one", chunk_rows=4, **KW)
    out = tmp_path / "two"
    procs = _start(out, slow=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and procs[1].poll() is None:
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["chunks"]:
                break
            time.sleep(0.05)
        assert procs[1].poll() is None, "the run ended before it could be killed"
        procs[1].send_signal(signal.SIGKILL)  # process 0 then blocks in a collective: kill it
    finally:
        _kill(procs)
    partial = load_dataset_result(out)
    assert not partial.complete and 1 <= len(partial.manifest["chunks"]) < 3
    _wait(_start(out))
    assert_same(load_dataset_result(out), one)
    assert np.all(np.isfinite(load_dataset_result(out).x))
