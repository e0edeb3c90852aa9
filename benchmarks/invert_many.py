"""Many targets through ``inversion.invert_dataset``: throughput, memory, write cost, kill-and-resume.

    python -m benchmarks.invert_many [--targets 10000] [--small 1000] [--steps 100] [--json OUT]

Each run is a fresh ``python -m experiments.invert_many`` process (seed U-Net outputs of
synthetic scenes, projected Adam from 0.5 in [0, 1], chunks of 256), so its peak RSS and
wall time include start-up, model loading and compilation. Measured:

* targets per second and peak RSS for ``--small`` and ``--targets`` targets (flat memory:
  targets are generated and results written chunk by chunk);
* the cost of the chunk writes: writing and checksumming one chunk's results, timed here on
  arrays of the same shapes, times the number of chunks, as a fraction of the run;
* kill and resume: a run (of ``--kill-targets`` targets, default ``--targets``) SIGKILLed once
  half of its chunks are in the manifest, then the same command again; the time lost is
  ``t(killed run) + t(resume) - t(uninterrupted run of as many targets)``.

Also XLA's FLOP count of one Adam step per target (``inversion.engine.step_cost``), the basis
of the projections in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from inversion import cpu_devices

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHUNK = 256


def _command(n: int, out: pathlib.Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "experiments.invert_many", "--targets", str(n), "--out",
            str(out), "--steps", str(steps), "--chunk-rows", str(CHUNK), "--no-progress"]  # fmt: skip


def timed_run(n: int, out: pathlib.Path, steps: int) -> dict:
    start = time.perf_counter()
    subprocess.run(_command(n, out, steps), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {"targets": n, "wall_s": seconds, "targets_per_s": n / seconds,
            "invert_dataset_s": summary["seconds"], "max_rss_bytes": summary["max_rss_bytes"],
            "output_residual_median": summary["output_residual_median"],
            "input_error_median": summary["input_error_median"]}  # fmt: skip


def killed_and_resumed(n: int, out: pathlib.Path, steps: int) -> dict:
    chunks = -(-n // CHUNK)
    start = time.perf_counter()
    proc = subprocess.Popen(_command(n, out, steps), cwd=ROOT, stdout=subprocess.DEVNULL)
    manifest = out / "manifest.json"
    try:
        while proc.poll() is None:
            if manifest.exists():
                try:
                    done = len(json.loads(manifest.read_text())["chunks"])
                except (json.JSONDecodeError, KeyError):
                    done = 0
                if done >= chunks // 2:
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_s = time.perf_counter() - start
    done = len(json.loads(manifest.read_text())["chunks"])
    start = time.perf_counter()
    subprocess.run(_command(n, out, steps), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {"chunks": chunks, "chunks_done_when_killed": done, "killed_run_s": killed_s,
            "resume_s": time.perf_counter() - start}  # fmt: skip


def write_cost(steps: int, size: int = 32, repeats: int = 5) -> float:
    """Median seconds to write and checksum one chunk's results (the arrays invert_dataset
    writes for CHUNK rows of size x size x 1 inputs)."""
    from inversion import dataset

    rng = np.random.default_rng(0)
    arrays = {"rows": np.arange(CHUNK), "x": rng.uniform(size=(CHUNK, size, size, 1)).astype(np.float32),
              "loss": rng.uniform(size=CHUNK).astype(np.float32),
              "residual": rng.uniform(size=CHUNK).astype(np.float32),
              "steps": np.full(CHUNK, steps, np.int32), "status_code": np.zeros(CHUNK, np.int32)}  # fmt: skip
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "chunk.npz"
        for _ in range(repeats):
            t = time.perf_counter()
            dataset.atomic_savez(path, arrays)
            dataset.sha256_file(path)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def flops_per_target(steps: int) -> float:
    """XLA's FLOPs of ``steps`` Adam steps for one target (seed U-Net, 32x32, batch 64)."""
    import jax.numpy as jnp
    import optax

    from experiments.invert_many import seed_model, target_fn
    from inversion import engine, solvers

    model, size = seed_model(False)
    fn = target_fn(model, None)
    x0 = jnp.full((64, size, size, 1), 0.5)
    cost = engine.step_cost(fn, jnp.zeros((64, size, size, 1)), x0=x0,
                            solver=solvers.Optax(optax.adam(0.1)), steps=steps)  # fmt: skip
    return cost["flops"] / 64 * steps


def main(argv=None) -> dict:
    cpu_devices.configure()  # for the FLOP count; the runs are their own processes
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.invert_many", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume run")
    parser.add_argument(
        "--kill-targets", type=int, default=None, help="targets of the kill-and-resume run"
    )
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    from benchmarks import benchmarking as bm

    out: dict = {"machine": bm.machine(), "steps": args.steps, "chunk_rows": CHUNK}
    print(bm.describe(out["machine"]), file=sys.stderr)
    work = pathlib.Path(tempfile.mkdtemp(prefix="invert_many_"))
    try:
        out["small"] = timed_run(args.small, work / "small", args.steps)
        print("small", out["small"], file=sys.stderr)
        out["large"] = timed_run(args.targets, work / "large", args.steps)
        print("large", out["large"], file=sys.stderr)
        per_chunk = write_cost(args.steps)
        chunks = -(-args.targets // CHUNK)
        out["write_s_per_chunk"] = per_chunk
        out["write_fraction"] = per_chunk * chunks / out["large"]["invert_dataset_s"]
        if not args.no_kill:
            n_kill = args.kill_targets or args.targets
            k = killed_and_resumed(n_kill, work / "killed", args.steps)
            base = (
                out["large"]
                if n_kill == args.targets
                else timed_run(n_kill, work / "kill-reference", args.steps)
            )
            k["targets"] = n_kill
            k["uninterrupted_s"] = base["wall_s"]
            k["lost_s"] = k["killed_run_s"] + k["resume_s"] - base["wall_s"]
            out["kill_and_resume"] = k
            print("kill", k, file=sys.stderr)
        out["flops_per_target"] = flops_per_target(args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
