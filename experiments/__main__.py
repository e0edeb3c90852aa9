"""``python -m experiments reproduce [--out DIR] [--quick | --full] [--only NAME ...] [--set k=v ...]``.

Runs every experiment in :data:`EXPERIMENTS` on one profile (``default``, the CPU figures;
``--quick`` tiny sizes; ``--full`` the larger settings) and writes ``DIR/report.md``: the
profile, git commit and package versions, each experiment's config, figures and metrics, and
one table with every seed or paper value beside the value reproduced. ``--set field=value``
changes that field in every selected experiment that has it (a field none has is refused
before anything runs). An experiment that
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
from collections.abc import Iterable, Sequence

from experiments.common import DEFAULT_OUT, experiment_dir, profile_of
from experiments.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_record,
    field_types,
    split_assignment,
)
from experiments.provenance import describe_commit
from experiments.provenance import provenance as collect_provenance

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
    "invertible_baselines",
    "visualisation",
    "feature_visualisation",
    "layer_probes",
    "real_network",
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


def _describe_config(config: dict) -> str:
    """``'profile quick: steps=200, lr=0.05; overrides: steps=200'``."""
    fields = {k: v for k, v in config.items() if k not in ("profile", "overrides")}
    text = f"profile {config.get('profile', '?')}: " + ", ".join(
        f"{k}={_format(v)}" for k, v in fields.items()
    )
    if config.get("overrides"):
        text += "; set: " + ", ".join(f"{k}={_format(v)}" for k, v in config["overrides"].items())
    return text


def write_report(
    out: pathlib.Path,
    outcomes: dict[str, dict],
    *,
    profile: str,
    provenance: dict | None = None,
) -> pathlib.Path:
    """Write ``out/report.md`` from each experiment's outcome (metrics or error, and the
    ``config`` record it ran with), with each experiment's own Markdown tables (``*.md`` in its
    folder) verbatim, its figures and its scalar metrics. The header gives the profile, the git commit and the
    machine (``provenance``: :func:`experiments.provenance.provenance`, collected if None)."""
    provenance = provenance or collect_provenance()
    versions = provenance.get("versions", {})
    lines = [
        "# Reproduction report",
        "",
        f"Profile: {profile}. Commit: {describe_commit(provenance.get('git', {}))}.",
        "",
        f"Machine: {_machine()}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
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
        if "config" in outcome:
            lines += [f"Config: {_describe_config(outcome['config'])}.", ""]
        if "error" in outcome:
            lines += ["**Failed:**", "", "```", outcome["error"].rstrip(), "```"]
            continue
        folder = out / name
        for table in sorted(folder.glob("*.md")):  # an experiment's own tables, verbatim
            lines += [table.read_text().rstrip(), ""]
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


def configs_for(
    names: Iterable[str], profile: str = "default", assignments: Sequence[str] = ()
) -> dict[str, ExperimentConfig]:
    """Each experiment's ``get_config(profile)`` with the ``--set`` assignments applied to the
    experiments that have the field. Raises :class:`ConfigError` for a field that no selected
    experiment has, and for a value that does not parse for an experiment that has it."""
    configs = {}
    for name in names:
        configs[name] = importlib.import_module(f"experiments.{name}").get_config(profile)
    for assignment in assignments:
        field, _ = split_assignment(assignment)
        owners = [n for n, c in configs.items() if field in field_types(type(c))]
        if field == "profile":
            raise ConfigError("the profile is chosen with --quick or --full, not --set")
        if not owners:
            raise ConfigError(
                f"no selected experiment has a field {field!r} (selected: {', '.join(configs)})"
            )
        for n in owners:
            configs[n] = apply_overrides(configs[n], [assignment], name=n)
    return configs


def reproduce(
    out: pathlib.Path,
    *,
    profile: str = "default",
    only: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, dict]:
    """Run the selected experiments (all by default) on ``profile`` with the ``--set``
    ``overrides``, then write the report. Config errors are raised before anything runs."""
    import matplotlib

    matplotlib.use("Agg")
    names = list(only or available())
    configs = configs_for(names, profile, overrides)
    outcomes: dict[str, dict] = {}
    for name in names:
        print(f"== {name} ({profile})", flush=True)
        start = time.perf_counter()
        config = configs[name]
        try:
            module = importlib.import_module(f"experiments.{name}")
            metrics = module.run(config, out)
            outcomes[name] = {"metrics": metrics}
        except Exception:  # one failing figure must not hide the others
            outcomes[name] = {"error": traceback.format_exc()}
            print(outcomes[name]["error"], file=sys.stderr)
        outcomes[name]["config"] = config_record(config)
        outcomes[name]["seconds"] = time.perf_counter() - start
        print(f"   {outcomes[name]['seconds']:.1f} s", flush=True)
    experiment_dir(out, ".")
    report = write_report(out, outcomes, profile=profile)
    print(f"report: {report}")
    return outcomes


def main(argv=None) -> int:
    from inversion import cpu_devices

    # before any JAX: one XLA:CPU device per core, batch 64 ~1.6x faster on 2 cores (BENCHMARKS.md)
    cpu_devices.configure()
    parser = argparse.ArgumentParser(
        prog="python -m experiments", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every experiment and write report.md")
    rep.add_argument("--out", default=str(DEFAULT_OUT))
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the larger settings (tens of minutes)")
    size.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    rep.add_argument("--only", nargs="+", choices=EXPERIMENTS, help="run only these experiments")
    rep.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field in every selected experiment that has it",
    )
    args = parser.parse_args(argv)
    names = args.only or available()
    profile = profile_of(args)
    try:
        configs_for(names, profile, args.overrides)
    except ConfigError as err:
        rep.error(str(err))
    outcomes = reproduce(
        pathlib.Path(args.out), profile=profile, only=names, overrides=args.overrides
    )
    return 1 if any("error" in o for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
