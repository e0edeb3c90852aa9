"""Throughput of the inversion engine: targets per second inverting the seed U-Net with Adam.

    python -m benchmarks.throughput [--batch 1,16,64,256] [--steps 200] [--torch]
                                    [--loop auto] [--repeats 3] [--json PATH]

For each batch size ``B``: ``B`` targets ``y = f(x)`` of the seed U-Net ``f`` (random inputs
``x ~ U(0, 1)`` of ``size × size``) are inverted by :func:`inversion.invert_batch` with Adam
(lr 0.05) for ``steps`` steps from ``x0 = 0.1 · N(0, I)``. Reported per batch and loop: targets
per second, milliseconds per step, XLA's FLOPs per step (cost analysis of the compiled step),
achieved GFLOP/s and its fraction of the 2048² float32 matmul rate measured in the same run,
peak memory (host RSS on CPU, ``peak_bytes_in_use`` on an accelerator), compile time (the
warm-up call minus a timed call), and, with ``--torch``, the same loop in PyTorch eager
(:mod:`benchmarks.torch_baseline`, same weights, same starts), interleaved with the JAX
runs so that both see the same machine load. Times are medians of ``--repeats`` runs.

Runtime on a 2-core CPU with the defaults: about 15 minutes with ``--torch`` (batch 256 ×
200 steps dominates); ``--steps 50`` gives the same per-step figures in a quarter of the time.
The same command runs on GPU/TPU (the engine picks the compiled loop there); ``--torch``
then still times PyTorch on the CPU. Results are discussed in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import inversion
from benchmarks import benchmarking as bm
from inversion import cpu_devices
from inversion.engine import invert_batch, step_cost

MODELS = ("seed-unet",)
LOOPS = ("auto", "python", "compiled")
LEARNING_RATE = 0.05


def build(model: str, size: int, batch: int, *, key: int = 0):
    """``(fn, targets, x0, torch_params)`` for ``batch`` targets of ``model`` at ``size``.

    Targets are ``f(x)`` for inputs ``x ~ U(0, 1)``; starts are ``x0 ~ 0.1 · N(0, I)`` (numpy's
    generator seeded with ``key``); the network's weights come from ``seed_unet(key)``.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    from models.pure import per_example, split
    from models.seed import seed_unet

    net = seed_unet(key)
    apply_fn, params = split(net)
    fn = per_example(apply_fn, params)

    rng = np.random.default_rng(key)  # host RNG: nothing to compile
    inputs = rng.uniform(size=(batch, size, size, 1)).astype(np.float32)
    targets = jax.jit(lambda x: apply_fn(params, x))(inputs)
    x0 = jnp.asarray(0.1 * rng.standard_normal((batch, size, size, 1)), jnp.float32)
    torch_params = {
        n: (np.asarray(m.kernel[...]), np.asarray(m.bias[...]))
        for n, m in net.conv_layers().items()
    }
    return fn, targets, x0, torch_params


def _jax_runner(fn, targets, x0, steps, loop):
    def run():
        x = invert_batch(
            fn,
            targets,
            x0=x0,
            steps=steps,
            solver=inversion.solvers.Optax.by_name("adam", LEARNING_RATE),
            execution=inversion.Execution(loop=loop),
        ).x
        return np.asarray(jax.block_until_ready(x))

    return run


def _torch_runner(torch_params, targets, x0, steps, threads):
    import torch as pt

    from benchmarks import torch_baseline as tb

    net = tb.seed_unet_torch(torch_params)
    y_host, x0_host = np.array(targets), np.array(x0)  # writable copies

    def run():
        before = pt.get_num_threads()
        pt.set_num_threads(threads)
        try:  # invert_adam updates its start in place when it can: give it a fresh copy
            return tb.invert_adam(net, y_host, x0_host.copy(), steps=steps, lr=LEARNING_RATE)[0]
        finally:
            pt.set_num_threads(before)

    return run


def _residual_median(forward, x, targets) -> float:
    """Median over rows of ‖forward(x) − y‖ / ‖y‖."""
    y = np.asarray(targets).reshape(len(targets), -1)
    r = np.asarray(forward(jnp.asarray(x, jnp.float32))).reshape(len(y), -1) - y
    return float(np.median(np.linalg.norm(r, axis=1) / np.linalg.norm(y, axis=1)))


def _timed_value(run):
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def measure(
    *,
    model: str = "seed-unet",
    size: int = 32,
    batches=(1, 16, 64, 256),
    steps: int = 200,
    repeats: int = 3,
    loops=("auto",),
    torch: bool = False,
    matmul_n: int = bm.MATMUL_SIZE,
    log=print,
) -> dict:
    """Measure every (batch, loop) and return ``{'machine', 'matmul', 'rows', 'settings'}``.

    Each row holds ``batch``, ``loop``, ``seconds`` (median of ``repeats`` runs of ``steps``
    steps, after one warm-up run), ``targets_per_s``, ``ms_per_step``, ``flops_per_step`` (XLA's
    cost analysis of the compiled step), ``gflops``, ``peak_fraction`` (of the higher of the two
    matmul rates measured before and after), ``compile_s`` (warm-up minus timed run),
    ``peak_memory_bytes`` and ``memory_increase_bytes`` (sampled host RSS, or the device's
    ``peak_bytes_in_use``, during the timed runs), ``step_buffer_bytes`` (XLA's argument, output
    and temporary buffers of one chunk's step program on one device),
    ``memory_per_target_bytes`` (that per row), ``chunk_rows``, ``chunks``, ``devices`` (the
    rows of a chunk are split over them), ``memory_kind`` and ``load_average``.
    With ``torch``, PyTorch is timed with 1 thread and
    with its default thread count, every run interleaved with the JAX runs, and the row adds
    ``torch_by_threads`` (median seconds per thread count), the best of them as
    ``torch_seconds``/``torch_targets_per_s``/``torch_threads``, ``speedup_vs_torch`` and
    ``max_abs_diff_vs_torch`` (largest difference between the two recovered inputs; Adam's
    first steps move by ±lr wherever a gradient is near zero, so float rounding alone separates
    the two runs' inputs on this ill-conditioned problem) and ``torch_output_residual_median``.
    Every row has ``output_residual_median``: the median over targets of
    ‖f(x) − y‖ / ‖y‖ for the recovered ``x``, which both implementations should share.
    The matmul yardstick is one ``matmul_n × matmul_n`` float32 product (2048 by default).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    if repeats < 1 or steps < 1 or size < 4 or size % 4:
        raise ValueError(
            f"need repeats >= 1, steps >= 1 and size a multiple of 4; got "
            f"repeats={repeats}, steps={steps}, size={size}"
        )
    bad = [lp for lp in loops if lp not in LOOPS]
    if bad:
        raise ValueError(f"unknown loop {bad[0]!r}; expected one of {list(LOOPS)}")
    info = bm.machine()
    log(f"machine: {bm.describe(info)}")
    peak = bm.matmul_peak(n=matmul_n)
    log(f"matmul {matmul_n}² float32: {peak['gflops']:.1f} GFLOP/s")
    thread_counts = ()
    if torch:
        import torch as pt

        thread_counts = tuple(sorted({1, pt.get_num_threads()}))
        info["torch"] = f"{pt.__version__} (threads tried: {list(thread_counts)})"
    rows = []
    for batch in batches:
        fn, targets, x0, torch_params = build(model, size, batch)
        cost = step_cost(
            fn,
            targets,
            x0=x0,
            steps=steps,
            solver=inversion.solvers.Optax.by_name("adam", LEARNING_RATE),
        )
        runs = {("jax", lp): _jax_runner(fn, targets, x0, steps, lp) for lp in loops}
        for n in thread_counts:
            runs[("torch", n)] = _torch_runner(torch_params, targets, x0, steps, n)
        first = {name: _timed_value(run)[0] for name, run in runs.items()}  # warm-up
        times = {name: [] for name in runs}
        mems = {name: [] for name in runs}
        last = {}
        for _ in range(repeats):  # interleaved: every variant sees the same load
            for name, run in runs.items():
                with bm.PeakMemory() as mem:
                    seconds, last[name] = _timed_value(run)
                times[name].append(seconds)
                mems[name].append(mem)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        forward = jax.jit(jax.vmap(fn))

        peak_rate = peak["gflops"]
        for lp in loops:
            name = ("jax", lp)
            t = med[name]
            row = dict(
                batch=batch,
                loop=lp,
                seconds=t,
                times=times[name],
                targets_per_s=batch / t,
                ms_per_step=1e3 * t / steps,
                flops_per_step=cost["flops"],
                gflops=cost["flops"] * steps / t / 1e9,
                peak_fraction=cost["flops"] * steps / t / 1e9 / peak_rate,
                compile_s=max(first[name] - t, 0.0),
                peak_memory_bytes=max(m.peak_bytes for m in mems[name]),
                memory_increase_bytes=max(m.increase_bytes for m in mems[name]),
                memory_kind=mems[name][0].kind,
                chunk_rows=cost["chunk_rows"],
                chunks=cost["chunks"],
                devices=cost["devices"],
                output_residual_median=_residual_median(forward, last[name], targets),
                load_average=bm.load_average(),
            )
            # XLA's buffers of one chunk's step program on one device (arguments + outputs +
            # temporaries): the memory a step needs, whatever the allocator keeps cached
            step_bytes = cost["argument_bytes"] + cost["output_bytes"] + cost["temp_bytes"]
            row.update(
                step_buffer_bytes=step_bytes,
                memory_per_target_bytes=step_bytes / (cost["chunk_rows"] / cost["devices"]),
            )
            if thread_counts:
                best = min(thread_counts, key=lambda n: med[("torch", n)])
                tt = med[("torch", best)]
                row.update(
                    torch_by_threads={str(n): med[("torch", n)] for n in thread_counts},
                    torch_times={str(n): times[("torch", n)] for n in thread_counts},
                    torch_threads=best,
                    torch_seconds=tt,
                    torch_targets_per_s=batch / tt,
                    torch_ms_per_step=1e3 * tt / steps,
                    speedup_vs_torch=tt / t,
                    torch_memory_increase_bytes=max(
                        m.increase_bytes for m in mems[("torch", best)]
                    ),
                    max_abs_diff_vs_torch=float(np.max(np.abs(last[name] - last[("torch", best)]))),
                    torch_output_residual_median=_residual_median(
                        forward, last[("torch", best)], targets
                    ),
                )
            rows.append(row)
            log(_line(row))
    peak_after = bm.matmul_peak(n=matmul_n)
    log(
        f"matmul {matmul_n}² float32 after: {peak_after['gflops']:.1f} GFLOP/s; "
        f"load {bm.load_average()}"
    )
    best_peak = max(peak["gflops"], peak_after["gflops"])
    for row in rows:  # the fraction of the better of the two matmul rates (the lower fraction)
        row["peak_fraction"] = row["gflops"] / best_peak
    info["load_average_end"] = bm.load_average()
    info["max_rss_bytes"] = bm.max_rss_bytes()
    settings = dict(
        model=model,
        size=size,
        batches=list(batches),
        steps=steps,
        repeats=repeats,
        loops=list(loops),
        learning_rate=LEARNING_RATE,
        optimizer="adam",
        torch=torch,
        matmul_n=matmul_n,
    )
    return {
        "machine": info,
        "matmul": {"before": peak, "after": peak_after},
        "rows": rows,
        "settings": settings,
    }


def _line(row: dict) -> str:
    text = (
        f"batch {row['batch']:4d} {row['loop']:8s} {row['targets_per_s']:8.2f} targets/s "
        f"{row['ms_per_step']:8.2f} ms/step {row['flops_per_step'] / 1e9:7.3f} GFLOP/step "
        f"{row['gflops']:6.1f} GFLOP/s, compile {row['compile_s']:.1f}s"
    )
    if "torch_targets_per_s" in row:
        text += (
            f" | torch {row['torch_targets_per_s']:7.2f} targets/s "
            f"({row['torch_threads']} thr) x{row['speedup_vs_torch']:.2f}"
        )
    return text


def table(out: dict) -> str:
    """The rows of :func:`measure` as a Markdown table (medians; ratios against PyTorch)."""
    torch = any("torch_targets_per_s" in r for r in out["rows"])
    head = [
        "batch",
        "loop",
        "targets/s",
        "ms/step",
        "GFLOP/step",
        "GFLOP/s",
        "% of matmul",
        "step buffers/target",
        "peak RSS",
        "compile s",
        "load",
    ]
    if torch:
        head += ["torch targets/s (1 thr / default)", "× best torch", "× default torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out["rows"]:
        cells = [
            r["batch"],
            r["loop"],
            f"{r['targets_per_s']:.2f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['flops_per_step'] / 1e9:.3f}",
            f"{r['gflops']:.1f}",
            f"{100 * r['peak_fraction']:.0f}%",
            f"{r['memory_per_target_bytes'] / 2**10:.0f} KiB",
            f"{r['peak_memory_bytes'] / 2**20:.0f} MiB",
            f"{r['compile_s']:.1f}",
            f"{r['load_average'][0]:.1f}" if r["load_average"] else "-",
        ]
        if torch:
            by = r["torch_by_threads"]
            rates = " / ".join(f"{r['batch'] / by[k]:.2f}" for k in sorted(by, key=int))
            default = max(by, key=int)
            cells += [rates, f"{r['speedup_vs_torch']:.2f}", f"{by[default] / r['seconds']:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    # before any JAX computation: one XLA:CPU device per core (unless the user chose a count),
    # as the engine's batched inversion runs it (~1.6x faster at batch 64 on 2 cores)
    cpu_devices.configure()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="seed-unet", choices=MODELS)
    parser.add_argument("--size", type=int, default=32, help="input height = width")
    parser.add_argument("--batch", default="1,16,64,256", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument(
        "--loop", default="auto", help=f"comma-separated engine loops from {list(LOOPS)}"
    )
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch baseline")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        parser.error(f"--batch must be comma-separated ints, got {args.batch!r}")
    if any(b < 1 for b in batches):
        parser.error(f"batch sizes must be >= 1, got {batches}")
    out = measure(
        model=args.model,
        size=args.size,
        batches=batches,
        steps=args.steps,
        repeats=args.repeats,
        loops=tuple(args.loop.split(",")),
        torch=args.torch,
    )
    print(table(out))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
