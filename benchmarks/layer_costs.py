"""Where an inversion step's time goes: each seed U-Net layer's forward + input-gradient cost.

    python -m benchmarks.layer_costs [--rows 32] [--repeats 30] [--step-rows 8,16,64]
                                     [--json PATH]

For each layer of :func:`models.seed_unet` at the activation shapes of a 32×32 input, with
``rows`` images (the rows one CPU device handles in :mod:`benchmarks.throughput`), this times
``x ↦ (layer(x), ∂/∂x Σ layer(x) · c)`` for a random cotangent ``c``: one forward and one
input-gradient pass, which is what an inversion step asks of the layer (no weight gradients).
It reports milliseconds (median of ``repeats``), XLA's FLOPs, GFLOP/s and the fraction of a
2048² float32 matmul measured in the same run, and then one whole Adam step on the network
(jitted, buffer-donating, as the engine runs it on CPU) for comparison with the sum of its
parts, at ``rows`` and at each ``--step-rows`` (milliseconds per row: how the per-target cost
changes with the rows one device runs at once, which sets the engine's CPU chunk size).

For the 3×3 multi-channel convolutions it also times two alternatives that do fewer
multiplications and checks they compute the same thing:

* ``engine (lax)``: ``jax.lax.conv_general_dilated``, what :func:`models.layers.conv2d` runs
  for them (the single-channel first and last convolutions are also timed against ``lax``,
  which the engine replaces there by tap matrix products);
* ``winograd F(2,3)`` / ``F(4,3)``: Lavin & Gray's minimal filtering (2.25× / 4× fewer
  multiplications per output), written here with slices and one batched matrix product per
  transform point. They are *probes*, not engine code: they answer whether trading
  multiplications for transforms pays on this backend (on XLA:CPU it did not; BENCHMARKS.md).

To see one core's share of a data-parallel step, pin the process to a core with a single
device and no intra-op threads::

    INVERSION_CPU_DEVICES=1 XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
        taskset -c 0 python -m benchmarks.layer_costs
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import benchmarking as bm
from inversion import cpu_devices
from models import layers

# Lavin & Gray (2016) transforms: y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for tiles of m×m outputs.
WINOGRAD = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array(
            [
                [4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1],
            ],
            np.float64,
        ),
        np.array(
            [
                [1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1],
            ]
        ),
        np.array(
            [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
            np.float64,
        ),
    ),
}


LAYERS = ("enc1", "pool1", "enc2", "pool2", "bottleneck", "up2", "dec2", "up1", "cat1", "out")


def _combine(parts: list, matrix: np.ndarray) -> list:
    """``[Σ_u matrix[k, u] · parts[u] for k]``, skipping zero coefficients."""
    out = []
    for row in matrix:
        terms = [
            p if c == 1 else -p if c == -1 else float(c) * p
            for c, p in zip(row, parts, strict=True)
            if c != 0
        ]
        out.append(sum(terms[1:], terms[0]))
    return out


def winograd_conv3x3(x, kernel, m: int = 2):
    """Stride-1 'SAME' 3×3 cross-correlation by Winograd F(m×m, 3×3), m in {2, 4}."""
    bt, g, at = WINOGRAD[m]
    a = m + 2
    b, h, w, ci = x.shape
    co = kernel.shape[-1]
    th, tw = -(-h // m), -(-w // m)
    xp = jnp.pad(x, ((0, 0), (1, m * th + 1 - h), (1, m * tw + 1 - w), (0, 0)))

    def slices(z, axis, n):  # z[..., u + m·i, ...] for i < n, u < a
        return [jax.lax.slice_in_dim(z, u, u + m * (n - 1) + 1, m, axis) for u in range(a)]

    rows = _combine(slices(xp, 1, th), bt)
    v = jnp.stack([c for r in rows for c in _combine(slices(r, 2, tw), bt)])
    gj = jnp.asarray(g, kernel.dtype)
    u = jnp.einsum("ai,ijco,bj->abco", gj, kernel, gj).reshape(a * a, ci, co)
    prod = jnp.einsum("kpc,kco->kpo", v.reshape(a * a, b * th * tw, ci), u)
    prod = prod.reshape(a, a, b, th, tw, co)
    y = jnp.stack(
        [jnp.stack(_combine(list(p), at), axis=3) for p in _combine(list(prod), at)], axis=2
    )  # (b, th, m, tw, m, co)
    return y.reshape(b, m * th, m * tw, co)[:, :h, :w]


def _lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _timed(fn, args, repeats: int) -> tuple[float, float]:
    """(median ms, XLA flops) of ``jit(fn)(*args)``."""
    jitted = jax.jit(fn)
    flops = float((jitted.lower(*args).compile().cost_analysis() or {}).get("flops", 0.0))
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), flops


def _forward_and_input_gradient(layer, shapes, rng):
    """``(fn, args)``: ``fn(c, *xs) = (layer(*xs), ∂/∂xs Σ layer(*xs) · c)`` with random ``xs`` and
    cotangent ``c``, all arguments (so that nothing is folded into a compile-time constant and
    the forward is kept even for a linear layer, whose input-gradient does not need it)."""
    xs = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    c = jnp.asarray(rng.normal(size=jax.eval_shape(layer, *xs).shape), jnp.float32)

    def fn(c, *xs):
        y, vjp = jax.vjp(layer, *xs)
        return y, vjp(c)

    return fn, [c, *xs]


def _time_adam_step(apply_fn, params, rows: int, repeats: int, rng) -> tuple[float, float]:
    """(median ms, XLA flops) of one jitted, buffer-donating Adam step inverting ``rows``
    targets of ``apply_fn`` (the step :mod:`inversion.loop` runs, driven from Python)."""
    x = jnp.asarray(rng.uniform(size=(rows, 32, 32, 1)), jnp.float32)
    y = apply_fn(params, x)
    opt = optax.adam(0.05)

    def step(x, state):
        g = jax.grad(lambda v: jnp.mean((apply_fn(params, v) - y) ** 2))(x)
        updates, state = opt.update(g, state)
        return optax.apply_updates(x, updates), state

    x0 = 0.1 * x
    jitted = jax.jit(step, donate_argnums=(0, 1))
    flops = float((jitted.lower(x0, opt.init(x0)).compile().cost_analysis() or {}).get("flops", 0))
    x0, state = jax.block_until_ready(jitted(x0, opt.init(x0)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x0, state = jax.block_until_ready(jitted(x0, state))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), flops


def layer_cases(kernels: dict, rows: int) -> list[tuple]:
    """``(layer, variant, fn, input shapes)`` for every seed U-Net layer at ``rows`` images of
    32×32 (``kernels``: HWIO kernels by layer name, e.g. ``enc1``, ``up2``, ``out``)."""
    k, r = kernels, rows
    cases = [
        ("enc1 conv 3x3 1->16", "engine", lambda x: layers.conv2d(x, k["enc1"]), [(r, 32, 32, 1)]),
        ("enc1 conv 3x3 1->16", "lax", lambda x: _lax_conv(x, k["enc1"]), [(r, 32, 32, 1)]),
        ("pool1 max 2x2", "engine", layers.max_pool2d, [(r, 32, 32, 16)]),
        ("pool2 max 2x2", "engine", layers.max_pool2d, [(r, 16, 16, 32)]),
        (
            "up2 convT 2x2/2 64->32",
            "engine",
            lambda x: layers.conv_transpose2d(x, k["up2"]),
            [(r, 8, 8, 64)],
        ),
        (
            "up1 convT 2x2/2 32->16",
            "engine",
            lambda x: layers.conv_transpose2d(x, k["up1"]),
            [(r, 16, 16, 32)],
        ),
        ("cat1 concat", "engine", layers.concat_skip, [(r, 32, 32, 16), (r, 32, 32, 16)]),
        ("out conv 3x3 32->1", "engine", lambda x: layers.conv2d(x, k["out"]), [(r, 32, 32, 32)]),
        ("out conv 3x3 32->1", "lax", lambda x: _lax_conv(x, k["out"]), [(r, 32, 32, 32)]),
    ]
    for name, size, cin in (("enc2", 16, 16), ("bottleneck", 8, 32), ("dec2", 16, 64)):
        kern = k[name]
        label = f"{name} conv 3x3 {cin}->{kern.shape[-1]}"
        cases += [
            (
                label,
                "engine (lax)",
                lambda x, kern=kern: _lax_conv(x, kern),
                [(r, size, size, cin)],
            ),
            (
                label,
                "winograd F(2,3)",
                lambda x, kern=kern: winograd_conv3x3(x, kern, 2),
                [(r, size, size, cin)],
            ),
            (
                label,
                "winograd F(4,3)",
                lambda x, kern=kern: winograd_conv3x3(x, kern, 4),
                [(r, size, size, cin)],
            ),
        ]
    return cases


def measure(
    rows: int = 32,
    repeats: int = 30,
    step_rows=(),
    matmul_n: int = bm.MATMUL_SIZE,
    only=None,
    log=print,
) -> dict:
    """Per-layer and whole-step costs at ``rows`` images (the whole step also at each of
    ``step_rows``); ``only``: time just the layers whose name starts with one of these
    (e.g. ``("dec2",)``). See the module docstring."""
    from models.pure import split
    from models.seed import seed_unet

    if rows < 1 or repeats < 1 or any(n < 1 for n in step_rows):
        raise ValueError(
            f"need rows >= 1, repeats >= 1 and step_rows >= 1, got rows={rows}, "
            f"repeats={repeats}, step_rows={step_rows}"
        )
    if only is not None and not set(only) <= set(LAYERS):
        raise ValueError(f"only={only!r}: unknown layer; expected names from {list(LAYERS)}")
    info = bm.machine()
    log(f"machine: {bm.describe(info)}")
    peak = bm.matmul_peak(n=matmul_n)["gflops"]
    log(f"matmul {matmul_n}² float32: {peak:.1f} GFLOP/s")
    net = seed_unet(0)
    k = {name.split(".")[0]: layer.kernel[...] for name, layer in net.conv_layers().items()}
    rng = np.random.default_rng(0)
    cases = layer_cases(k, rows)
    if only is not None:
        cases = [c for c in cases if c[0].split()[0] in only]
    results = []
    for name, variant, layer, shapes in cases:
        fn, args = _forward_and_input_gradient(layer, shapes, rng)
        ms, flops = _timed(fn, args, repeats)
        row = dict(
            layer=name,
            variant=variant,
            ms=ms,
            flops=flops,
            gflops=flops / ms / 1e6,
            peak_fraction=flops / ms / 1e6 / peak,
        )
        if variant.startswith("winograd"):  # the probe must compute the same conv
            ref = _lax_conv(args[1], k[name.split()[0]])
            got = winograd_conv3x3(args[1], k[name.split()[0]], int(variant.split("(")[1][0]))
            row["max_rel_diff_vs_lax"] = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
        results.append(row)
        log(
            f"{name:28s} {variant:16s} {ms:7.2f} ms {flops / 1e6:8.1f} MFLOP "
            f"{row['gflops']:6.1f} GFLOP/s ({100 * row['peak_fraction']:.0f}% of matmul)"
        )

    apply_fn, params = split(net)
    steps = {}
    for n in sorted({rows, *step_rows}):
        ms, flops = _time_adam_step(apply_fn, params, n, repeats, rng)
        steps[n] = dict(
            rows=n,
            ms=ms,
            ms_per_row=ms / n,
            flops=flops,
            gflops=flops / ms / 1e6,
            peak_fraction=flops / ms / 1e6 / peak,
        )
        log(
            f"{f'whole Adam step, {n} rows':28s} {'engine':16s} {ms:7.2f} ms {flops / 1e6:8.1f} "
            f"MFLOP {steps[n]['gflops']:6.1f} GFLOP/s ({100 * steps[n]['peak_fraction']:.0f}% of "
            f"matmul), {ms / n:.2f} ms per row"
        )
    whole = steps[rows]
    return {
        "machine": info,
        "matmul_gflops": peak,
        "rows": rows,
        "layers": results,
        "step": whole,
        "steps": list(steps.values()),
    }


def main(argv=None) -> dict:
    # before any JAX computation: the engine's CPU device split (one XLA:CPU device per core
    # unless the user chose a count; INVERSION_CPU_DEVICES=1 for one core's share, see above)
    cpu_devices.configure()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.layer_costs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=32, help="images per call")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls (median)")
    parser.add_argument(
        "--step-rows",
        default="",
        help="comma-separated row counts at which to time the whole step too",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    try:
        step_rows = tuple(int(n) for n in args.step_rows.split(",") if n)
    except ValueError:
        parser.error(f"--step-rows must be comma-separated ints, got {args.step_rows!r}")
    out = measure(rows=args.rows, repeats=args.repeats, step_rows=step_rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
