"""Shared plumbing for experiment scripts: options, output folders, metrics, figures.

Every experiment module ``experiments/<name>.py`` defines

* ``run(out: pathlib.Path, *, quick: bool = False, full: bool = False) -> dict`` that
  writes its PNG figures and ``metrics.json`` into ``out / <name>`` and returns the
  metrics dict, and
* ``main(argv=None)`` = ``cli(__name__ ...)``, so ``python -m experiments.<name>`` works.

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
from typing import Any

import numpy as np

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


def write_metrics(directory: pathlib.Path, metrics: dict) -> pathlib.Path:
    """Write ``metrics`` (arrays converted to lists) to ``directory/metrics.json``."""
    path = pathlib.Path(directory) / "metrics.json"
    path.write_text(json.dumps(_to_jsonable(metrics), indent=2, sort_keys=True) + "\n")
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


def cli(run: Callable[..., dict], name: str, doc: str | None, argv=None) -> dict:
    """Parse ``--out/--quick/--full`` and call ``run``; print where results went."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default results/)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--full", action="store_true", help="the larger settings of the study")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    start = time.perf_counter()
    metrics = run(pathlib.Path(args.out), quick=args.quick, full=args.full)
    seconds = time.perf_counter() - start
    print(f"{name}: wrote {experiment_dir(args.out, name)} in {seconds:.1f}s")
    return metrics


def trained_seed_unet(*, quick: bool = False, size: int = 32, progress: bool = False,
                      skips: bool = True):
    """The seed U-Net trained on synthetic segmentation scenes, from the model cache if present.

    Returns ``(model, test_set, history)``. Default: 2,000 training scenes, 400 Adam steps
    (quick: 256 scenes, 80 steps — still dice ≥ 0.9, the project's quality bar). The cache
    (``$INVERSION_CACHE`` or ``.cache/models``) is keyed by model, training config and data, so
    every experiment shares one training run. ``skips=False``: the same architecture, init key,
    data and training without the skip connections (a ``models.UNet``).
    """
    import jax
    from flax import nnx

    import models

    n_train, steps = (256, 80) if quick else (2000, 400)
    train_set = models.data.synthetic_scenes(jax.random.key(0), n_train, size=size)
    test_set = models.data.synthetic_scenes(jax.random.key(1), 128, size=size)
    config = models.TrainConfig(steps=steps, batch_size=32, learning_rate=5e-3, eval_every=steps)
    if skips:
        build, key = (lambda: models.seed_unet(0)), {"model": "seed_unet", "init_key": 0,
                                                     **models.SEED_UNET_CONFIG}
    else:
        arch = {**models.SEED_UNET_CONFIG, "skips": False}
        build, key = (lambda: models.UNet(**arch, rngs=nnx.Rngs(params=0))), {
            "model": "unet", "init_key": 0, **arch}
    result = models.cached_train(
        build,
        key,
        train_set,
        config=config,
        eval_data=test_set,
        progress=progress,
    )
    return result.model, test_set, result.history
