"""Checkpoints with orbax, checked on restore.

A checkpoint directory holds one sub-directory per step (an orbax ``CheckpointManager``), each
with two items: ``state`` (the pytree of arrays, ``StandardSave``) and ``meta`` (JSON): the
format tag, a manifest ``[(path, shape, dtype)]`` of the leaves, a SHA-256 checksum of their
bytes and the caller's metadata. Restoring checks the manifest against the template (a
different model is a `CheckpointError`, not a deep orbax failure) and the checksum against the
restored bytes (a damaged file is a `CheckpointError` even where orbax would not notice).

The cache of trained models built on these checkpoints is :mod:`models.cache`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

__all__ = [
    "CheckpointError",
    "available_steps",
    "load_metadata",
    "restore_model",
    "restore_tree",
    "save_model",
    "save_tree",
]

_FORMAT = "inversion-lab-checkpoint/1"
_META_KEYS = ("format", "manifest", "checksum", "metadata", "model")


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be restored: corrupted, or of another model."""


def _host_leaves(tree) -> list[tuple[str, np.ndarray]]:
    """``(path, host array)`` per leaf; PRNG keys as their raw ``uint32`` key data."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
    return out


def _manifest(tree) -> list[list]:
    return [
        [jax.tree_util.keystr(p), list(leaf.shape), str(leaf.dtype)]
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _checksum(tree) -> str:
    digest = hashlib.sha256()
    for path, leaf in _host_leaves(tree):
        digest.update(f"{path}|{leaf.dtype}|{leaf.shape}|".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _manager(directory: pathlib.Path, *, write: bool, keep: int | None = None):
    options = ocp.CheckpointManagerOptions(
        create=write,
        enable_async_checkpointing=False,
        preservation_policy=ocp.checkpoint_managers.LatestN(keep) if keep else None,
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def available_steps(directory) -> list[int]:
    """The finished checkpoint steps in ``directory``, ascending (``[]`` if there are none)."""
    path = pathlib.Path(directory)
    if not path.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in path.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()
    )


def save_tree(
    directory, tree, *, step: int, metadata: dict | None = None, keep: int | None = None
) -> pathlib.Path:
    """Save a pytree of arrays as checkpoint ``step`` of ``directory`` (replacing that step).

    ``metadata`` must be JSON-serialisable; ``keep`` keeps only the latest ``keep`` steps.
    Returns the step's directory.
    """
    return _save(directory, tree, step=step, metadata=metadata, keep=keep, model=None)


def _save(directory, tree, *, step, metadata, keep, model: str | None) -> pathlib.Path:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from err
    path = pathlib.Path(directory)
    meta = {
        "format": _FORMAT,
        "manifest": _manifest(tree),
        "checksum": _checksum(tree),
        "metadata": metadata,
        "model": model,
    }
    with _manager(path, write=True, keep=keep) as manager:
        if int(step) in manager.all_steps():
            manager.delete(int(step))
        manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
        )
        manager.wait_until_finished()
    return path / str(int(step))


def _resolve_step(directory, step: int | None) -> tuple[pathlib.Path, int]:
    path = pathlib.Path(directory)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint directory at {path.absolute()}")
    steps = available_steps(path)
    if not steps:
        raise FileNotFoundError(f"no finished checkpoint in {path.absolute()}")
    if step is None:
        return path, steps[-1]
    if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {path.absolute()}; available steps: {steps}"
        )
    return path, step


def _read_meta(path: pathlib.Path, step: int) -> dict:
    where = path.absolute() / str(step)
    try:
        with _manager(path, write=False) as manager:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as err:  # orbax/json raise many types for damaged files
        raise CheckpointError(
            f"checkpoint {where} is corrupted or unreadable (metadata): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{where} is not a checkpoint written by save_tree")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint {where} is corrupted: its metadata lacks the keys {missing} "
            f"(expected {list(_META_KEYS)})"
        )
    if not isinstance(meta["manifest"], list) or not isinstance(meta["checksum"], str):
        raise CheckpointError(
            f"checkpoint {where} is corrupted: expected a list 'manifest' and a str 'checksum' "
            f"in its metadata, got {type(meta['manifest']).__name__} and "
            f"{type(meta['checksum']).__name__}"
        )
    return meta


def load_metadata(directory, *, step: int | None = None) -> dict | None:
    """The ``metadata`` that was saved with checkpoint ``step`` (default: the latest)."""
    path, step = _resolve_step(directory, step)
    return _read_meta(path, step)["metadata"]


def _abstract(leaf):
    sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(
        jax.devices()[0]
    )
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def restore_tree(directory, template, *, step: int | None = None) -> tuple[Any, dict | None]:
    """Restore checkpoint ``step`` (default: latest) into the structure of ``template``.

    ``template`` holds arrays or ``jax.ShapeDtypeStruct``s of the saved shapes and dtypes.
    Returns ``(tree, metadata)``. FileNotFoundError if there is no such checkpoint;
    `CheckpointError` if it is corrupted or its leaves differ from the template's.
    """
    path, step = _resolve_step(directory, step)
    where = path.absolute() / str(step)
    meta = _read_meta(path, step)
    expected = _manifest(template)
    if meta["manifest"] != expected:
        try:
            saved = {p: (s, d) for p, s, d in meta["manifest"]}
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {where} is corrupted: its manifest is not a list of "
                f"[path, shape, dtype] ({err})"
            ) from err
        wanted = {p: (s, d) for p, s, d in expected}
        diff = sorted(p for p in saved.keys() | wanted.keys() if saved.get(p) != wanted.get(p))
        raise CheckpointError(
            f"checkpoint {where} does not match the template: leaves differ at {diff[:5]} "
            f"(saved {[saved.get(p) for p in diff[:5]]}, template "
            f"{[wanted.get(p) for p in diff[:5]]})"
        )
    abstract = jax.tree.map(_abstract, template)
    try:
        with _manager(path, write=False) as manager:
            tree = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            ).state
    except Exception as err:  # tensorstore/orbax raise many types for damaged files
        raise CheckpointError(
            f"checkpoint {where} is corrupted or unreadable: {type(err).__name__}: {err}"
        ) from err
    if _checksum(tree) != meta["checksum"]:
        raise CheckpointError(f"checkpoint {where} is corrupted: its checksum does not match")
    return tree, meta["metadata"]


def save_model(
    directory, model: nnx.Module, *, step: int = 0, metadata: dict | None = None
) -> pathlib.Path:
    """Save the whole state of ``model`` (``nnx.state``) as checkpoint ``step`` of ``directory``."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    return _save(
        directory,
        nnx.state(model),
        step=step,
        metadata=metadata,
        keep=None,
        model=type(model).__name__,
    )


def restore_model(directory, model_template: nnx.Module, *, step: int | None = None) -> nnx.Module:
    """A new model: the graph of ``model_template`` with the state of checkpoint ``step``.

    ``model_template`` comes from the same constructor, e.g. ``nnx.eval_shape(lambda: UNet(…))``
    (no memory allocated) or a concretely initialised model; it is not modified.
    """
    if not isinstance(model_template, nnx.Module):
        raise TypeError(
            f"model_template must be a flax.nnx.Module, got {type(model_template).__name__}"
        )
    graphdef, state = nnx.split(model_template)
    path, step = _resolve_step(directory, step)
    saved_class = _read_meta(path, step).get("model")
    if saved_class != type(model_template).__name__:
        raise CheckpointError(
            f"checkpoint {path.absolute() / str(step)} holds a {saved_class}, not a "
            f"{type(model_template).__name__}"
        )
    restored, _ = restore_tree(path, state, step=step)
    return nnx.merge(graphdef, restored)
