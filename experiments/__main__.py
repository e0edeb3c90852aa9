"""``python -m experiments reproduce [--out DIR] [--full | --quick] [--only NAME ...]``.

Runs every experiment in :data:`EXPERIMENTS` (default CPU profile; ``--full`` for the
larger settings) and writes ``DIR/report.md``: each experiment's figures, its metrics, and
one table with every seed or paper value beside the value reproduced. An experiment that
fails is reported as failed (with its error) and the others still run; the command exits
non-zero if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import platform
import sys
import time
import traceback

from experiments.common import DEFAULT_OUT, experiment_dir

#: Experiment modules in the order of the report (only those that exist are run).
EXPERIMENTS = (
    "linear_inversion",
    "sigmoid_inversion",
    "relu_preimage",
    "pooling_loss",
    "conv_spectrum",
    "unet_inversion",
    "unet_layerwise",
    "preimage_spread",
    "alternatives",
)


def available() -> list[str]:
    here = pathlib.Path(__file__).parent
    return [name for name in EXPERIMENTS if (here / f"{name}.py").exists()]


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} values]"
    return json.dumps(value) if not isinstance(value, str) else value


def _machine() -> str:
    import jax

    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (
        f"{platform.node()} · {platform.machine()} · Python {platform.python_version()} · "
        f"jax {jax.__version__} · backend {jax.default_backend()} ({devices})"
    )


def write_report(out: pathlib.Path, outcomes: dict[str, dict], *, profile: str) -> pathlib.Path:
    """Write ``out/report.md`` from each experiment's outcome (metrics or error)."""
    lines = [
        "# Reproduction report",
        "",
        f"Profile: {profile}. Machine: {_machine()}.",
        "",
        "## Reference values beside the values reproduced",
        "",
        "| experiment | quantity | reference | reproduced | agrees |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, outcome in outcomes.items():
        for row in outcome.get("metrics", {}).get("references", []):
            lines.append(
                f"| {name} | {row['quantity']} | {_format(row['reference'])} | "
                f"{_format(row['reproduced'])} | {'yes' if row['agrees'] else '**no**'} |"
            )
    for name, outcome in outcomes.items():
        lines += ["", f"## {name}", "", f"Runtime: {outcome['seconds']:.1f} s.", ""]
        if "error" in outcome:
            lines += ["**Failed:**", "", "```", outcome["error"].rstrip(), "```"]
            continue
        folder = out / name
        for png in sorted(folder.glob("*.png")):
            lines.append(f"![{png.stem}]({name}/{png.name})")
        scalars = {
            k: v
            for k, v in outcome["metrics"].items()
            if k != "references" and isinstance(v, int | float | str | bool)
        }
        if scalars:
            lines += ["", "| metric | value |", "| --- | --- |"]
            lines += [f"| {k} | {_format(v)} |" for k, v in sorted(scalars.items())]
        lines += ["", f"All metrics: [{name}/metrics.json]({name}/metrics.json)"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def reproduce(
    out: pathlib.Path, *, full: bool = False, quick: bool = False, only=None
) -> dict[str, dict]:
    import matplotlib

    matplotlib.use("Agg")
    names = only or available()
    outcomes: dict[str, dict] = {}
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"experiments.{name}")
            metrics = module.run(out, quick=quick, full=full)
            outcomes[name] = {"metrics": metrics}
        except Exception:  # one failing figure must not hide the others
            outcomes[name] = {"error": traceback.format_exc()}
            print(outcomes[name]["error"], file=sys.stderr)
        outcomes[name]["seconds"] = time.perf_counter() - start
        print(f"   {outcomes[name]['seconds']:.1f} s", flush=True)
    experiment_dir(out, ".")
    report = write_report(
        out, outcomes, profile="full" if full else "quick" if quick else "default (CPU)"
    )
    print(f"report: {report}")
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every experiment and write report.md")
    rep.add_argument("--out", default=str(DEFAULT_OUT))
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the larger settings of the study")
    size.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    rep.add_argument("--only", nargs="+", choices=EXPERIMENTS, help="run only these experiments")
    args = parser.parse_args(argv)
    outcomes = reproduce(pathlib.Path(args.out), full=args.full, quick=args.quick, only=args.only)
    return 1 if any("error" in o for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
