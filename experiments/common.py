"""Shared plumbing for experiment scripts: the CLI, output folders, metrics, figures.

Every experiment module ``experiments/<name>.py`` defines ``NAME``, a frozen dataclass
``Config``, ``get_config(profile)`` and ``run(config, out) -> dict`` (see
:mod:`experiments.config`); ``run`` writes its PNG figures and ``metrics.json`` (with
:func:`write_metrics`) into ``out / NAME`` and returns the metrics dict, and
``main(argv=None)`` = ``cli(run, get_config, NAME, __doc__, argv)``, so
``python -m experiments.<name> [--out DIR] [--quick | --full] [--set field=value ...]`` works.

The returned metrics may hold a ``"references"`` list built with :func:`reference`;
``python -m experiments reproduce`` puts those rows beside each other in the report.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from experiments.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_record,
    describe_fields,
)
from experiments.provenance import provenance

DEFAULT_OUT = pathlib.Path("results")


def experiment_dir(out: str | pathlib.Path, name: str) -> pathlib.Path:
    """Create and return ``out / name``."""
    path = pathlib.Path(out) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        return _to_jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_metrics(directory: pathlib.Path, metrics: dict, config: ExperimentConfig) -> pathlib.Path:
    """Write ``metrics`` (arrays converted to lists) to ``directory/metrics.json``.

    Added to what is written (not to ``metrics`` itself): ``config``, the run's config with its
    profile and overrides (:func:`experiments.config.config_record`), and ``provenance``:
    package versions, git commit and dirtiness, backend and devices
    (:func:`experiments.provenance.provenance`).
    """
    clash = {"config", "provenance"} & set(metrics)
    if clash:
        raise ValueError(f"metrics may not hold {sorted(clash)}: write_metrics records them")
    record = {**metrics, "config": config_record(config), "provenance": provenance()}
    path = pathlib.Path(directory) / "metrics.json"
    path.write_text(json.dumps(_to_jsonable(record), indent=2, sort_keys=True) + "\n")
    return path


def save_figure(fig, path: pathlib.Path) -> pathlib.Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def reference(
    quantity: str, expected: Any, reproduced: Any, agrees: bool, source: str = "seed study"
) -> dict:
    """One row of the report's table: a reference value beside the value we got."""
    return {
        "quantity": quantity,
        "reference": expected,
        "reproduced": _to_jsonable(reproduced),
        "agrees": bool(agrees),
        "source": source,
    }


def build_parser(name: str, doc: str | None, default: ExperimentConfig) -> argparse.ArgumentParser:
    """The parser of ``python -m experiments.<name>``; its help lists the config fields."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=(doc or "").split("\n\n")[0],
        epilog="config fields (default profile; change with --set field=value):\n"
        + describe_fields(default),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default results/)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    size.add_argument("--full", action="store_true", help="the larger settings (tens of minutes)")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="override config fields, e.g. --set steps=800 (tuples: 1,2,3)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    return parser


def profile_of(args: argparse.Namespace) -> str:
    """The profile chosen by ``--quick`` / ``--full`` (else ``'default'``)."""
    return "quick" if args.quick else "full" if args.full else "default"


def cli(
    run: Callable[[ExperimentConfig, pathlib.Path], dict],
    get_config: Callable[[str], ExperimentConfig],
    name: str,
    doc: str | None,
    argv=None,
) -> dict | None:
    """Parse ``--out``, ``--quick | --full`` and ``--set``, then ``run(config, out)``.

    An unknown field or a value that does not parse to its field's type exits with a usage
    error naming the field. ``--print-config`` prints the config as JSON and returns None.
    """
    from inversion import cpu_devices

    # before any JAX: one XLA:CPU device per core, batch 64 ~1.6x faster on 2 cores (BENCHMARKS.md)
    cpu_devices.configure()
    parser = build_parser(name, doc, get_config("default"))
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(get_config(profile_of(args)), args.overrides, name=name)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(json.dumps(_to_jsonable(config_record(config)), indent=2))
        return None
    import matplotlib

    matplotlib.use("Agg")
    start = time.perf_counter()
    metrics = run(config, pathlib.Path(args.out))
    seconds = time.perf_counter() - start
    print(f"{name} ({config.profile}): wrote {experiment_dir(args.out, name)} in {seconds:.1f}s")
    return metrics


#: Training sizes of the shared seed U-Net per ``train_profile`` (they enter the cache key
#: through the data and the ``TrainConfig``; changing them retrains every cached model).
SEED_UNET_TRAINING = {
    "quick": {"n_train": 256, "steps": 80},
    "default": {"n_train": 2000, "steps": 400},
}
#: The values a config's ``train_profile`` field may take.
TrainProfile = Literal["quick", "default"]


def trained_seed_unet(
    *,
    train_profile: str = "default",
    skips: bool = True,
    size: int = 32,
    progress: bool = False,
    init_key: int = 0,
):
    """The seed U-Net trained on synthetic segmentation scenes, from the model cache if present.

    Returns ``(model, test_set, history)``. ``train_profile='default'``: 2,000 training scenes,
    400 Adam steps; ``'quick'``: 256 scenes, 80 steps — still dice >= 0.9, the project's quality
    bar (:data:`SEED_UNET_TRAINING`; experiments pass their config's ``train_profile``). The
    cache (``$INVERSION_CACHE`` or ``.cache/models``) is keyed by model, init key, training
    config and data, so every experiment shares one training run. ``skips=False``: the same
    architecture, init key, data and training without the skip connections (a ``models.UNet``).
    ``init_key``: the key of the weights' initialisation (0: the seed U-Net every experiment
    shares; others for the spread over seeds in ``experiments.unet_verdict``).
    """
    import jax
    from flax import nnx

    import models

    if train_profile not in SEED_UNET_TRAINING:
        raise ValueError(
            f"train_profile must be one of {sorted(SEED_UNET_TRAINING)}, got {train_profile!r}"
        )
    sizes = SEED_UNET_TRAINING[train_profile]
    if not isinstance(init_key, int) or isinstance(init_key, bool) or init_key < 0:
        raise ValueError(f"init_key must be a non-negative int, got {init_key!r}")
    train_set = models.data.synthetic_scenes(jax.random.key(0), sizes["n_train"], size=size)
    test_set = models.data.synthetic_scenes(jax.random.key(1), 128, size=size)
    steps = sizes["steps"]
    config = models.TrainConfig(steps=steps, batch_size=32, learning_rate=5e-3, eval_every=steps)
    if skips:
        arch = dict(models.SEED_UNET_CONFIG)
        build = lambda: models.seed_unet(init_key)  # noqa: E731
        key = {"model": "seed_unet", "init_key": init_key, **arch}
    else:
        arch = {**models.SEED_UNET_CONFIG, "skips": False}
        build = lambda: models.UNet(**arch, rngs=nnx.Rngs(params=init_key))  # noqa: E731
        key = {"model": "unet", "init_key": init_key, **arch}
    result = models.cached_train(
        build,
        key,
        train_set,
        config=config,
        eval_data=test_set,
        progress=progress,
    )
    return result.model, test_set, result.history


def seed_unet_decoder(unet, *, train_steps: int, n_train: int):
    """The learned inverse (:func:`models.decoder.learned_inverse`) of ``unet``'s output,
    trained on the first ``n_train`` training scenes (32x32, key 0) for ``train_steps`` Adam
    steps (5e-3, batch 32); from the model cache, so experiments with the same sizes share one
    training run."""
    import jax

    import models
    from models.decoder import learned_inverse

    train_x = models.data.synthetic_scenes(jax.random.key(0), n_train, size=32).images
    config = models.TrainConfig(
        task="regression",
        steps=train_steps,
        batch_size=32,
        learning_rate=5e-3,
        eval_every=train_steps,
    )
    return learned_inverse(
        models.jitted(unet), train_x, name="decoder_of_seed_unet_out", config=config
    )


def layer_metrics(layer) -> dict:
    """One layer of ``inversion.analysis.layerwise``'s report (a ``LayerReport``) as the
    metrics the layer experiments record: inversion errors when inverted, then the nullity at
    each precision, condition number, ``sigma_min``, dimensions and per-image nullities."""
    row = {}
    if layer.inverted:
        row.update(
            shape=list(layer.shape),
            feature_error=layer.feature_error,
            feature_error_per_image=layer.feature_error_per_input,
            relative_error=layer.relative_error,
            relative_error_per_image=layer.relative_error_per_input,
            psnr=layer.psnr,  # median over images: exact recoveries give ~150 dB
            psnr_per_image=layer.psnr_per_input,
        )
    row.update(
        nullity=layer.nullity["exact"],
        nullity_float32=layer.nullity["float32"],
        nullity_8bit=layer.nullity["8-bit"],
        condition_number=layer.condition_number,
        sigma_min=layer.sigma_min,
        n_in=layer.n_in,
        n_out=layer.n_out,
        nullity_per_image=layer.nullity_per_input,
    )
    return row


def layer_certificates(model, inputs) -> dict:
    """Per layer, the float64 certificate of ``d Phi_l / d x`` at every input, summarised over
    the inputs at the three precisions (``inversion.analysis.layerwise`` without inversion,
    :func:`layer_metrics`): the largest nullity, the largest condition number and the smallest
    ``sigma_min``."""
    import models
    from inversion.analysis import layerwise

    report = layerwise(
        models.activations_fn(model), np.asarray(inputs, np.float32), invert=False, bounds=None
    )
    return {layer.name: layer_metrics(layer) for layer in report}
