"""Invert many seed-U-Net targets with ``inversion.invert_dataset``, in one or several processes.

    python -m experiments.invert_many --targets N --out DIR [--layer NAME] [--steps S]
        [--chunk-rows C] [--quick]
        [--local-processes P]                                    # P processes on this machine
        [--num-processes P --process-id I --coordinator HOST:PORT]   # one process of P
        [--distributed]                         # Slurm / TPU pod: jax.distributed detects all

Targets are the trained seed U-Net's outputs (or, with ``--layer``, its activations at that
layer) on ``N`` synthetic scenes (``models.data.synthetic_scenes``, generated in blocks of 1,024
from ``fold_in(key(2), block)``, never the training or test scenes, so memory stays flat in
``N``); each is inverted from ``x0 = 0.5`` in the box ``[0, 1]`` by
projected Adam (lr 0.1, cosine schedule) for ``--steps`` steps. Results go to ``DIR`` chunk by
chunk (layout in :mod:`inversion.dataset`); running the same command again resumes, and
``DIR/summary.json`` holds the medians once every chunk is done.

Several processes use JAX's multi-controller runtime: ``jax.distributed.initialize`` with the
coordinator's address, CPU collectives over gloo, one global ``Mesh`` over every process's
devices. ``--local-processes P`` starts P copies of this command on this machine
(coordinator on 127.0.0.1, a free port, ``usable cores / P`` CPU devices each), waits for them
(at most ``--timeout`` seconds) and stops them all if one fails. On a cluster, start one copy
per host yourself:

* Slurm: ``srun --ntasks=HOSTS python -m experiments.invert_many --distributed ...``;
  ``jax.distributed.initialize()`` reads the coordinator, process count and id from Slurm.
* TPU pod slice: run the same command on every worker (``gcloud compute tpus tpu-vm ssh
  NAME --worker=all --command="python -m experiments.invert_many --distributed ..."``);
  ``jax.distributed.initialize()`` detects the slice.
* Anything else: ``--num-processes P --process-id I --coordinator HOST:PORT`` on each host.

``--out`` must be on a file system every process sees. ``--quick``: 16x16 scenes, the quick
training profile, 10 Adam steps, chunks of 8 (still resumable and multi-process).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import time

import optax

import inversion

ADAM_LR = 0.1
DATA_KEY = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.invert_many", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--targets", type=int, required=True, help="number of targets N")
    p.add_argument("--out", type=pathlib.Path, required=True, help="results folder")
    p.add_argument("--layer", default=None, help="invert this layer's activations instead")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 100; quick 10)")
    p.add_argument("--chunk-rows", type=int, default=None, help="targets per chunk (256; 8)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few steps")
    p.add_argument("--local-processes", type=int, default=None, help="spawn P local processes")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    p.add_argument("--distributed", action="store_true", help="jax.distributed auto-detect")
    p.add_argument("--timeout", type=float, default=3600.0, help="--local-processes: seconds")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--prepare", type=pathlib.Path, default=None, help=argparse.SUPPRESS)
    return p


def _check(parser, args) -> None:
    if args.targets < 1:
        parser.error(f"--targets must be >= 1, got {args.targets}")
    if args.local_processes is not None and args.local_processes < 1:
        parser.error(f"--local-processes must be >= 1, got {args.local_processes}")
    explicit = (args.num_processes, args.process_id, args.coordinator)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        parser.error("--num-processes, --process-id and --coordinator go together")
    if args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id must be in [0, {args.num_processes}), got {args.process_id}")
    if args.local_processes is not None and (args.num_processes is not None or args.distributed):
        parser.error("--local-processes starts the processes itself: give no process options")


def spawn_local(argv: list[str], processes: int, timeout: float) -> int:
    """Run ``processes`` copies of this command (process ids 0..P-1) on this machine; returns
    0 if every copy succeeded. All copies are killed if one fails or the timeout passes."""
    from inversion import cpu_devices

    port = _free_port()
    per = max(1, cpu_devices.usable_cores() // processes)
    rest = [a for a in argv if not a.startswith("--local-processes=")]
    if "--local-processes" in rest:  # drop "--local-processes P"
        i = rest.index("--local-processes")
        del rest[i : i + 2]
    procs = []
    env = {**os.environ, cpu_devices.ENV: str(per), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    for pid in range(processes):
        cmd = [sys.executable, "-m", "experiments.invert_many", *rest,
               "--num-processes", str(processes), "--process-id", str(pid),
               "--coordinator", f"127.0.0.1:{port}"]  # fmt: skip
        if pid > 0:
            cmd.append("--no-progress")
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    deadline = time.monotonic() + timeout
    codes: list[int | None] = [None] * processes
    try:
        while any(c is None for c in codes):
            for i, p in enumerate(procs):
                if codes[i] is None:
                    codes[i] = p.poll()
            if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    codes = [p.returncode for p in procs]
    if any(c != 0 for c in codes):
        print(f"invert_many: process exit codes {codes}", file=sys.stderr)
        return 1
    return 0


def seed_model(quick: bool):
    """``(model, size)``: the trained seed U-Net of the run (16x16 scenes when quick, else 32)."""
    from experiments.common import trained_seed_unet

    size = 16 if quick else 32
    model, _, _ = trained_seed_unet(train_profile="quick" if quick else "default", size=size)
    return model, size


def target_fn(model, layer: str | None):
    """The map of one input image to ``model``'s output (``layer=None``) or to layer ``layer``."""
    import models

    if layer is None:
        apply, params = models.split(model)
    else:
        names = models.layer_names(model)
        if layer not in names:
            raise ValueError(f"--layer must be one of {names}, got {layer!r}")
        apply, params = models.feature_fn(model, layer)
    return models.per_example(apply, params)


BLOCK = 1024  # scenes generated at a time: memory stays flat in the number of targets


def scenes(n: int, size: int):
    """The ``n`` input scenes in blocks of :data:`BLOCK` (block ``b`` drawn with
    ``fold_in(key(DATA_KEY), b)``), as float32 NHWC arrays."""
    for b in range(-(-n // BLOCK)):
        yield _block(b, n, size)


def targets_and_fn(n: int, *, quick: bool, layer: str | None, model=None):
    """``(fn, targets, size)``: the seed U-Net (or its map to ``layer``) and a generator of
    its outputs on the ``n`` scenes of :func:`scenes`, block by block."""
    import jax
    import numpy as np

    if model is None:
        model, size = seed_model(quick)
    else:
        size = 16 if quick else 32
    fn = target_fn(model, layer)
    batched = jax.jit(jax.vmap(fn))

    def targets():
        for block in scenes(n, size):
            yield np.concatenate(
                [np.asarray(batched(block[i : i + 256])) for i in range(0, len(block), 256)]
            )

    return fn, targets(), size


def input_error_median(out: pathlib.Path, n: int, size: int) -> float:
    """Median ``||x - x_true|| / ||x_true||`` over the results, read chunk by chunk."""
    import numpy as np

    result = inversion.load_dataset_result(out)
    errors = np.empty(n)
    truth = np.concatenate(list(scenes(n, size))) if n <= 4 * BLOCK else None
    for _, chunk in sorted((int(k), v) for k, v in result.manifest["chunks"].items()):
        for file in chunk["files"]:
            with np.load(out / file) as data:
                rows, x = data["rows"], data["x"]
            if truth is None:  # regenerate only the blocks these rows come from
                blocks = {int(r) // BLOCK for r in (rows.min(), rows.max())}
                ref = {b: _block(b, n, size) for b in range(min(blocks), max(blocks) + 1)}
                x_true = np.stack([ref[int(r) // BLOCK][int(r) % BLOCK] for r in rows])
            else:
                x_true = truth[rows]
            errors[rows] = np.linalg.norm((x - x_true).reshape(len(x), -1), axis=1) / (
                np.linalg.norm(x_true.reshape(len(x), -1), axis=1)
            )
    return float(np.median(errors))


def _block(b: int, n: int, size: int):
    import jax
    import numpy as np

    import models

    key = jax.random.fold_in(jax.random.key(DATA_KEY), b)
    count = min(BLOCK, n - b * BLOCK)
    return np.asarray(models.data.synthetic_scenes(key, count, size=size).images)


def prepare(path: pathlib.Path, quick: bool) -> None:
    """Write the trained model's parameters to ``path`` (one process, before any
    ``jax.distributed`` process starts JAX: the model cache's Orbax checkpoints are read
    here, never by the workers)."""
    import jax
    import numpy as np
    from flax import nnx

    model, _ = seed_model(quick)
    leaves = jax.tree.leaves(nnx.split(model)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, *[np.asarray(a) for a in leaves])
    os.replace(tmp, path)


def _load_prepared(path: pathlib.Path):
    """The seed U-Net with the parameters :func:`prepare` wrote."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import models

    graphdef, state = nnx.split(models.seed_unet(0))
    with np.load(path) as data:
        leaves = [jnp.asarray(data[f"arr_{i}"]) for i in range(len(data.files))]
    state = jax.tree.unflatten(jax.tree.structure(state), leaves)
    return nnx.merge(graphdef, state)


def run_worker(args) -> dict:
    import jax
    import numpy as np

    import inversion
    from inversion import cpu_devices, solvers

    model = None
    if args.num_processes is not None or args.distributed:
        # the model comes from a one-process helper: JAX must not start before initialize()
        rank = args.process_id if args.process_id is not None else os.getpid()
        prepared = args.out / f".model-{rank}.npz"
        cmd = [sys.executable, "-m", "experiments.invert_many", "--prepare", str(prepared),
               "--targets", "1", "--out", str(args.out)] + (["--quick"] if args.quick else [])  # fmt: skip
        env = {**os.environ, "INVERSION_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"}
        subprocess.run(cmd, check=True, env=env)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if args.distributed:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
                initialization_timeout=120,
            )
        model = _load_prepared(prepared)
        prepared.unlink(missing_ok=True)
    else:
        cpu_devices.configure()
    steps = args.steps or (10 if args.quick else 100)
    chunk_rows = args.chunk_rows or (8 if args.quick else 256)
    fn, targets, size = targets_and_fn(
        args.targets, quick=args.quick, layer=args.layer, model=model
    )
    solver = solvers.Optax(optax.adam(optax.cosine_decay_schedule(ADAM_LR, steps)))
    start = time.perf_counter()
    result = inversion.invert_dataset(
        fn,
        targets,
        out_dir=args.out,
        chunk_rows=chunk_rows,
        execution=inversion.Execution(progress=not args.no_progress),
        x0_shared=np.full((size, size, 1), 0.5, np.float32),
        solver=solver,
        steps=steps,
        problem=inversion.Problem(bounds=(0.0, 1.0)),
    )
    seconds = time.perf_counter() - start
    summary = {"targets": args.targets, "steps": steps, "chunk_rows": chunk_rows,
               "processes": jax.process_count(), "devices": jax.device_count(),
               "seconds": seconds, "layer": args.layer}  # fmt: skip
    summary["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if jax.process_index() == 0:
        summary.update(
            output_residual_median=float(np.median(result.residual)),
            input_error_median=input_error_median(args.out, args.targets, size),
        )
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))
    return summary


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.prepare is not None:
        prepare(args.prepare, args.quick)
        return 0
    if args.local_processes is not None and args.local_processes > 1:
        return spawn_local(argv, args.local_processes, args.timeout)
    run_worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
