"""Quality at equal wall time: how close each solver gets to the true inputs within a budget.

    python -m benchmarks.time_to_quality --write-problem P.npz [--n 64]
    python -m benchmarks.time_to_quality --problem P.npz --budget-s T --json OUT
    python -m benchmarks.time_to_quality --problem P.npz --compare [--torch] --json OUT

The problem (:mod:`benchmarks.seed_problem`): the trained seed U-Net's outputs on ``n`` held-out
test scenes, every start ``x0 = 0.5``, box ``[0, 1]``. The network is rebuilt from the file's
weights, so a file written elsewhere in the same format is accepted.

``--budget-s T`` runs the project's best method (:data:`BEST`) within ``T`` seconds of wall
time, compilation included (the engine's ``time_limit``, checked after every step), and
writes ``method``, ``seconds``, ``output_residual_median`` (``||fn(x) - y|| / ||y||``),
``input_error_median`` (``||x - x_true|| / ||x_true||``) and, from ``inversion.analysis.certify``
on the first ``--certify K`` rows, ``input_error_bound_median``: ``||fn(x) - y|| / sigma_min``
relative to ``||x||``, the input error that the remaining residual allows to first order
around the returned ``x`` (exactly, inside its linear region: the network is piecewise
affine).

``--compare`` runs every method of :data:`METHODS` one after the other (and with ``--torch``
first PyTorch eager Adam, the best of three learning rates with a cosine schedule and 400
steps, whose wall time becomes the budget of the time-limited methods unless ``--budget-s``
is given), and prints the table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable

import numpy as np
import optax

import inversion
from inversion import cpu_devices

TORCH_LRS = (0.01, 0.03, 0.1)
ADAM_STEPS = 400
MAX_STEPS = 5000  # a time-limited run stops at its deadline long before this
BOUNDS = (0.0, 1.0)


def _adam(lr: float, steps: int):

    from inversion import solvers

    return solvers.Optax(optax.adam(optax.cosine_decay_schedule(lr, steps)))


def run_adam(fn, problem, budget_s, *, lr: float = 0.1, steps: int = ADAM_STEPS):
    """Projected Adam, cosine schedule, a fixed number of steps (no time limit)."""

    return inversion.invert_batch(
        fn,
        problem.targets,
        x0=problem.x0,
        solver=_adam(lr, steps),
        steps=steps,
        problem=inversion.Problem(bounds=BOUNDS),
    )


def _limited(solver, *, check_every: int = 1):
    def run(fn, problem, budget_s, x0=None):

        return inversion.invert_batch(
            fn,
            problem.targets,
            x0=problem.x0 if x0 is None else x0,
            solver=solver,
            steps=MAX_STEPS,
            problem=inversion.Problem(bounds=BOUNDS),
            execution=inversion.Execution(time_limit=budget_s, check_every=check_every),
        )

    return run


def _solvers():
    from inversion import solvers

    return {
        "lbfgs": solvers.LBFGS(memory=20),
        "cached_lbfgs": solvers.CachedLBFGS(memory=20),
        "gauss_newton": solvers.GaussNewton(cg_steps=10),
        "levenberg_marquardt": solvers.LevenbergMarquardt(cg_steps=10),
    }


def run_adam_then_lbfgs(fn, problem, budget_s, *, warmup: int = 150):
    """``warmup`` Adam steps (lr 0.1, cosine over the warm-up), then projected L-BFGS for the
    rest of the budget from where Adam stopped."""
    start = time.perf_counter()
    warm = run_adam(fn, problem, budget_s, lr=0.1, steps=warmup)
    left = max(budget_s - (time.perf_counter() - start), 1e-3)
    return _limited(_solvers()["lbfgs"])(fn, problem, left, x0=warm.x)


POLISH_SHARE = 0.25  # of the budget, for the active-set polish after cached L-BFGS


def run_cached_lbfgs_then_polish(fn, problem, budget_s, *, iterations: int = 10):
    """:class:`inversion.solvers.CachedLBFGS` for ``1 - POLISH_SHARE`` of the budget, then
    :class:`inversion.solvers.ActiveSetPolish` (``iterations`` LSMR steps on the frozen
    Jacobian per step) for the rest, from where L-BFGS stopped."""
    from inversion import solvers

    start = time.perf_counter()
    first = _limited(_solvers()["cached_lbfgs"])(fn, problem, (1 - POLISH_SHARE) * budget_s)
    left = max(budget_s - (time.perf_counter() - start), 1e-3)
    polish = solvers.ActiveSetPolish(iterations=iterations)
    return _limited(polish)(fn, problem, left, x0=first.x)


def run_coarse_to_fine(fn, problem, budget_s, *, coarse_time: float = 0.2):
    """Cached L-BFGS on the 16x16 problem ``fn(U z)`` for ``coarse_time`` of the budget, then
    on the 32x32 one from ``U z`` (:func:`inversion.multiscale.coarse_to_fine`)."""
    from inversion import multiscale

    return multiscale.coarse_to_fine(
        fn, problem.targets, x0=problem.x0, solver=_solvers()["cached_lbfgs"],
        steps=MAX_STEPS, coarse_time=coarse_time, bounds=BOUNDS, time_limit=budget_s,
    )  # fmt: skip


LEAKY_SCHEDULE = (0.1, 0.03, 0.0)  # leaky-ReLU slopes; 0 is the true network


def run_continuation(fn, problem, budget_s, *, stage_time: float = 0.15):
    """Cached L-BFGS on the seed U-Net with leaky ReLUs of slope 0.1, then 0.03 (each
    ``stage_time`` of the budget), then on the true network (slope 0) for the rest
    (:func:`inversion.continuation.continuation`)."""
    from inversion import continuation

    leaky = seed_unet_family(problem.weights)

    def family(slope):
        return fn if slope == 0 else leaky(slope)

    return continuation.continuation(
        family, LEAKY_SCHEDULE, problem.targets, x0=problem.x0,
        solver=_solvers()["cached_lbfgs"], steps=MAX_STEPS, stage_time=stage_time,
        bounds=BOUNDS, time_limit=budget_s,
    )  # fmt: skip


COMPACTION_TOL = 1.8e-3  # the residual goal: rows below it stop costing time


def run_compaction(fn, problem, budget_s, *, round_steps: int = 100):
    """Cached L-BFGS in rounds of ``round_steps`` steps; rows with residual <= 1.8e-3 leave
    the batch after each round (:func:`inversion.compaction.invert_compacting`)."""
    from inversion import compaction

    return compaction.invert_compacting(
        fn, problem.targets, x0=problem.x0, solver=_solvers()["cached_lbfgs"],
        residual_tol=COMPACTION_TOL, round_steps=round_steps, bounds=BOUNDS,
        time_limit=budget_s,
    )  # fmt: skip


def seed_unet_family(weights):
    """``slope -> fn``: the seed SimpleUNet of :func:`benchmarks.seed_problem.seed_unet_fn`
    with every ReLU replaced by a leaky ReLU of that negative slope (slope 0: the network)."""
    import jax.numpy as jnp

    from models import layers

    w = {name: (jnp.asarray(k), jnp.asarray(b)) for name, (k, b) in weights.items()}

    def family(slope: float):
        def act(x):
            return layers.leaky_relu(x, slope)

        def conv(name, x):
            return layers.conv2d(x, *w[name])

        def up(name, x):
            return layers.conv_transpose2d(x, *w[name], stride=2)

        def fn(x):
            x = x[None]
            e1 = act(conv("enc1.conv1", x))
            e2 = act(conv("enc2.conv1", layers.max_pool2d(e1)))
            b = act(conv("bottleneck.conv1", layers.max_pool2d(e2)))
            d2 = act(conv("dec2.conv1", layers.concat_skip(up("up2", b), e2)))
            return conv("out", layers.concat_skip(up("up1", d2), e1))[0]

        return fn

    return family


def methods() -> dict[str, Callable]:
    """Every method ``--compare`` runs: name -> ``run(fn, problem, budget_s) -> Result``."""
    table = {
        "adam (lr 0.1, cosine, 400 steps)": lambda fn, p, b: run_adam(fn, p, b, lr=0.1),
        "adam (lr 0.03, cosine, 400 steps)": lambda fn, p, b: run_adam(fn, p, b, lr=0.03),
    }
    for name, solver in _solvers().items():
        table[name] = _limited(solver)
    table["adam 150 steps, then lbfgs"] = run_adam_then_lbfgs
    table["cached_lbfgs, then active-set polish"] = run_cached_lbfgs_then_polish
    table["coarse-to-fine cached_lbfgs"] = run_coarse_to_fine
    table["continuation (leaky 0.1, 0.03, 0) cached_lbfgs"] = run_continuation
    table["compaction cached_lbfgs"] = run_compaction
    return table


BEST = "cached_lbfgs"  # the method --budget-s runs (the best median residual in BENCHMARKS.md)


def evaluate(fn, problem, result, seconds: float) -> dict:
    """Medians (and per-row values) of the output residual and the input error."""
    x = np.asarray(result.x)
    err = np.linalg.norm((x - problem.x_true).reshape(len(x), -1), axis=1) / np.linalg.norm(
        problem.x_true.reshape(len(x), -1), axis=1
    )
    residual = np.asarray(result.residual, np.float64)
    return {
        "seconds": seconds,
        "output_residual_median": float(np.median(residual)),
        "input_error_median": float(np.median(err)),
        "rows_residual_le_1.8e-3": int(np.sum(residual <= 1.8e-3)),
        "rows_input_error_le_0.1": int(np.sum(err <= 0.1)),
        "steps_median": float(np.median(np.asarray(result.steps))),
        "status": {
            str(k): int(v)
            for k, v in zip(*np.unique(result.status, return_counts=True), strict=True)
        },
        "output_residual": residual.tolist(),
        "input_error": err.tolist(),
    }


def certificate_bounds(fn, x: np.ndarray, targets: np.ndarray, rows: int) -> dict:
    """``||fn(x) - y|| / sigma_min / ||x||`` at the first ``rows`` returned inputs (float64
    Jacobian SVD, :func:`inversion.analysis.certify`)."""
    import jax.numpy as jnp

    from inversion.analysis import certify

    bounds, sigma_min = [], []
    for i in range(min(rows, len(x))):
        cert = certify(fn, jnp.asarray(x[i]))
        r = float(np.linalg.norm(np.asarray(fn(jnp.asarray(x[i]))) - targets[i]))
        bounds.append(cert.input_error_bound(r) / float(np.linalg.norm(x[i])))
        sigma_min.append(cert.sigma_min)
    return {
        "input_error_bound_median": float(np.median(bounds)) if bounds else None,
        "input_error_bound": bounds,
        "sigma_min": sigma_min,
        "certified_rows": len(bounds),
        "rows_bound_le_0.1": int(np.sum(np.asarray(bounds) <= CERTIFIED)),
    }


CERTIFIED = 0.1  # the certificate's relative input-error bound that counts as recovered


def time_to_certified(fn, problem, budget_s: float, multiples, rows: int) -> dict:
    """Time to certified recovery of :data:`BEST`: run it within ``m * budget_s`` for each
    ``m`` in ``multiples`` (each run from the start) and certify the first ``rows`` returned
    inputs, until the bound ``||r|| / sigma_min / ||x||`` is at most :data:`CERTIFIED` for
    half of them. ``time_to_certified_s`` is that run's wall time, or ``None`` if no run got
    there."""
    runs = []
    for m in multiples:
        row = run_method(BEST, methods()[BEST], fn, problem, m * budget_s)
        row.update(certificate_bounds(fn, row.pop("_x"), problem.targets, rows))
        runs.append({k: v for k, v in row.items() if k not in ("output_residual", "input_error")})
        runs[-1]["budget_s"] = m * budget_s
        print(
            f"{BEST} within {m * budget_s:.1f} s: residual {row['output_residual_median']:.2e}, "
            f"bound median {row['input_error_bound_median']:.3g}, "
            f"{row['rows_bound_le_0.1']}/{row['certified_rows']} rows <= {CERTIFIED}",
            file=sys.stderr,
        )
        if 2 * row["rows_bound_le_0.1"] >= row["certified_rows"]:
            return {"runs": runs, "time_to_certified_s": row["seconds"]}
    return {"runs": runs, "time_to_certified_s": None}


def run_torch(problem, lrs=TORCH_LRS) -> dict:
    """PyTorch eager Adam (cosine, box clamp, 400 steps) at each learning rate of ``lrs``."""
    from benchmarks import torch_baseline as tb

    net = tb.seed_unet_torch(problem.weights)
    out = {}
    for lr in lrs:
        x, seconds = tb.invert_adam(
            net,
            problem.targets,
            problem.x0.copy(),
            steps=ADAM_STEPS,
            lr=lr,
            cosine=True,
            bounds=BOUNDS,
        )
        pred = tb.forward_nhwc(net, x)
        flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
        residual = np.linalg.norm(flat(pred - problem.targets), axis=1) / np.linalg.norm(
            flat(problem.targets), axis=1
        )
        err = np.linalg.norm(flat(x - problem.x_true), axis=1) / np.linalg.norm(
            flat(problem.x_true), axis=1
        )
        out[lr] = {
            "seconds": seconds,
            "output_residual_median": float(np.median(residual)),
            "input_error_median": float(np.median(err)),
            "rows_residual_le_1.8e-3": int(np.sum(residual <= 1.8e-3)),
            "rows_input_error_le_0.1": int(np.sum(err <= 0.1)),
        }
    return out


def run_method(name: str, run: Callable, fn, problem, budget_s: float) -> dict:
    """One method within ``budget_s``; ``fn`` is wrapped in a new function first, so that no
    method reuses a program another one compiled (each pays its own compilation)."""

    def fresh(x):
        return fn(x)

    start = time.perf_counter()
    result = run(fresh, problem, budget_s)
    np.asarray(result.x)  # wait for the result
    seconds = time.perf_counter() - start
    return {"method": name, **evaluate(fn, problem, result, seconds), "_x": np.asarray(result.x)}


def table(rows: list[dict]) -> str:
    head = ["method", "seconds", "median output residual", "median input error", "steps",
            "rows res <= 1.8e-3", "rows err <= 0.1"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        steps = r.get("steps_median")
        lines.append(
            f"| {r['method']} | {r['seconds']:.1f} | {r['output_residual_median']:.2e} | "
            f"{r['input_error_median']:.3f} | {'-' if steps is None else f'{steps:.0f}'} | "
            f"{r['rows_residual_le_1.8e-3']} | {r['rows_input_error_le_0.1']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    # before any JAX computation: one XLA:CPU device per core (unless the user chose a count)
    cpu_devices.configure()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.time_to_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--write-problem", type=pathlib.Path, help="write the problem file")
    parser.add_argument("--n", type=int, default=64, help="test scenes in a written problem")
    parser.add_argument("--problem", type=pathlib.Path, help="a problem file to solve")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget (s)")
    parser.add_argument("--compare", action="store_true", help="run every method")
    parser.add_argument("--torch", action="store_true", help="with --compare: PyTorch Adam too")
    parser.add_argument("--certify", type=int, default=4, help="rows certified (0: none)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write results here")
    parser.add_argument(
        "--torch-lrs",
        type=str,
        default=",".join(str(lr) for lr in TORCH_LRS),
        help="with --torch: PyTorch Adam's learning rates, e.g. 0.1 (default: 0.01,0.03,0.1)",
    )
    parser.add_argument(
        "--certified-time",
        type=str,
        default=None,
        help="budget multiples, e.g. 1,2,4: time of BEST to a certified bound <= 0.1 on half "
        "of the --certify rows",
    )
    args = parser.parse_args(argv)
    if args.write_problem is None and args.problem is None:
        parser.error("give --write-problem P.npz and/or --problem P.npz")
    from benchmarks import benchmarking as bm
    from benchmarks.seed_problem import load_problem, seed_unet_fn, write_problem

    if args.write_problem is not None:
        if args.n < 1:
            parser.error(f"--n must be >= 1, got {args.n}")
        write_problem(args.write_problem, n=args.n)
        print(f"wrote {args.write_problem}", file=sys.stderr)
        if args.problem is None:
            return {}
    if args.budget_s is None and not (args.compare and args.torch):
        parser.error("give --budget-s T (or --compare --torch, which takes PyTorch's time)")
    if args.budget_s is not None and not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.torch and not args.compare:
        parser.error("--torch needs --compare")
    try:
        torch_lrs = tuple(float(lr) for lr in args.torch_lrs.split(","))
    except ValueError:
        torch_lrs = ()
    if not torch_lrs or any(not lr > 0 for lr in torch_lrs):
        parser.error(f"--torch-lrs must be positive numbers like 0.03,0.1, got {args.torch_lrs!r}")
    multiples = None
    if args.certified_time is not None:
        try:
            multiples = [float(m) for m in args.certified_time.split(",")]
        except ValueError:
            multiples = []
        if not multiples or any(not m > 0 for m in multiples) or args.certify < 1:
            parser.error(
                f"--certified-time needs positive multiples like 1,2,4 and --certify >= 1, "
                f"got {args.certified_time!r} and --certify {args.certify}"
            )
    try:
        problem = load_problem(args.problem)
    except ValueError as err:
        parser.error(str(err))
    fn = seed_unet_fn(problem.weights)
    out: dict = {"machine": bm.machine(), "problem": str(args.problem), "rows": len(problem.x0)}
    print(bm.describe(out["machine"]), file=sys.stderr)
    if not args.compare:
        best = run_method(BEST, methods()[BEST], fn, problem, args.budget_s)
        x = best.pop("_x")
        if args.certify > 0:
            best.update(certificate_bounds(fn, x, problem.targets, args.certify))
        out.update(best, budget_s=args.budget_s)
        print(table([best]))
    else:
        rows = []
        if args.torch:
            out["torch"] = run_torch(problem, torch_lrs)
            lr = min(out["torch"], key=lambda k: out["torch"][k]["output_residual_median"])
            for k, v in out["torch"].items():
                rows.append({"method": f"PyTorch eager Adam (lr {k}, cosine, 400 steps)", **v})
            out["torch_best_lr"] = lr
        budget = args.budget_s if args.budget_s is not None else out["torch"][lr]["seconds"]
        out["budget_s"] = budget
        out["methods"] = []
        for name, run in methods().items():
            row = run_method(name, run, fn, problem, budget)
            x = row.pop("_x")
            if args.certify > 0:
                row.update(certificate_bounds(fn, x, problem.targets, args.certify))
            out["methods"].append(row)
            rows.append(row)
            print(table([row]).splitlines()[-1], file=sys.stderr)
        print(table(rows))
    if multiples is not None:
        budget = out["budget_s"]
        out["certified_time"] = time_to_certified(fn, problem, budget, multiples, args.certify)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
