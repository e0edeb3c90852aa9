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

from inversion import cpu_devices

TORCH_LRS = (0.01, 0.03, 0.1)
ADAM_STEPS = 400
MAX_STEPS = 5000  # a time-limited run stops at its deadline long before this
BOUNDS = (0.0, 1.0)


def _adam(lr: float, steps: int):
    import optax

    from inversion import solvers

    return solvers.Optax(optax.adam(optax.cosine_decay_schedule(lr, steps)))


def run_adam(fn, problem, budget_s, *, lr: float = 0.1, steps: int = ADAM_STEPS):
    """Projected Adam, cosine schedule, a fixed number of steps (no time limit)."""
    import inversion

    return inversion.invert_batch(
        fn, problem.targets, x0=problem.x0, solver=_adam(lr, steps), steps=steps, bounds=BOUNDS
    )


def _limited(solver, *, check_every: int = 1):
    def run(fn, problem, budget_s, x0=None):
        import inversion

        return inversion.invert_batch(
            fn,
            problem.targets,
            x0=problem.x0 if x0 is None else x0,
            solver=solver,
            steps=MAX_STEPS,
            bounds=BOUNDS,
            time_limit=budget_s,
            check_every=check_every,
        )

    return run


def _solvers():
    from inversion import solvers

    return {
        "lbfgs": solvers.LBFGS(memory=20),
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


def methods() -> dict[str, Callable]:
    """Every method ``--compare`` runs: name -> ``run(fn, problem, budget_s) -> Result``."""
    table = {
        "adam (lr 0.1, cosine, 400 steps)": lambda fn, p, b: run_adam(fn, p, b, lr=0.1),
        "adam (lr 0.03, cosine, 400 steps)": lambda fn, p, b: run_adam(fn, p, b, lr=0.03),
    }
    for name, solver in _solvers().items():
        table[name] = _limited(solver)
    table["adam 150 steps, then lbfgs"] = run_adam_then_lbfgs
    return table


BEST = "lbfgs"  # the method --budget-s runs (the best median residual in BENCHMARKS.md)


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
    }


def run_torch(problem) -> dict:
    """PyTorch eager Adam (cosine, box clamp, 400 steps) at each of :data:`TORCH_LRS`."""
    from benchmarks import torch_baseline as tb

    net = tb.seed_unet_torch(problem.weights)
    out = {}
    for lr in TORCH_LRS:
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
    start = time.perf_counter()
    result = run(fn, problem, budget_s)
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
            out["torch"] = run_torch(problem)
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
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
