"""A disk cache of trained models: train once, restore afterwards.

:func:`cached_train` keys a trained model by ``sha256(model config, TrainConfig, data fingerprints)``
and stores it under ``$INVERSION_CACHE`` (default ``.cache/models``): the first call trains
(resumably), later calls restore. Processes that share a cache entry take turns: the whole
check-train-write of one entry runs under an exclusive ``fcntl.flock`` on ``<entry>/.lock``, so
a second process waits for the first and then restores its model; a process killed mid-write
leaves a ``*.orbax-checkpoint-tmp`` folder that the next holder of the lock deletes.

The entry's key is ``sha256`` of the JSON of ``{format, model config, TrainConfig.to_json(),
sha256(train data bytes), sha256(eval data bytes)}`` (:func:`cache_key`); the model and its
training history are stored with :mod:`models.checkpoint` and checked on restore. This module
sits above both :mod:`models.checkpoint` and :mod:`models.training`, which do not import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import warnings
from collections.abc import Callable

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from models.checkpoint import (
    CheckpointError,
    available_steps,
    load_metadata,
    restore_model,
    save_model,
)
from models.losses import as_pair
from models.training import TrainConfig, TrainResult, train

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock (one process per cache entry)
    fcntl = None

__all__ = ["DEFAULT_CACHE_DIR", "cache_key", "cached_train", "entry_lock"]

_CACHE_FORMAT = "inversion-lab-cache/1"
DEFAULT_CACHE_DIR = ".cache/models"


def _fingerprint(arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(f"{a.dtype}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def cache_key(model_config: dict, config: TrainConfig, train_data, eval_data=None) -> str:
    """``sha256`` of the model config, the `TrainConfig` and the bytes of the data (hex)."""
    try:
        model_json = json.dumps(model_config, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"model_config must be JSON-serialisable: {err}") from err
    parts = {
        "format": _CACHE_FORMAT,
        "model": model_json,
        "train": config.to_json(),
        "train_data": _fingerprint(as_pair(train_data, task=config.task, name="train_data")),
        "eval_data": None
        if eval_data is None
        else _fingerprint(as_pair(eval_data, task=config.task, name="eval_data")),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_train(
    build_model: Callable[[], nnx.Module],
    model_config: dict,
    train_data,
    *,
    config: TrainConfig,
    eval_data=None,
    cache_dir=None,
    retrain: bool = False,
    progress: bool = True,
) -> TrainResult:
    """`models.training.train` with a disk cache: train once, restore afterwards.

    ``build_model()`` must build the (untrained) model that ``model_config`` describes; the
    entry lives in ``cache_dir / cache_key(...)[:24]`` (``cache_dir`` defaults to
    ``$INVERSION_CACHE`` or ``.cache/models``). A hit restores the model and its history and
    returns ``from_cache=True``; a damaged entry is deleted and retrained with a warning;
    ``retrain=True`` ignores any entry. Training checkpoints inside the entry, so an
    interrupted first call resumes where it stopped. Several processes may call it with the
    same key at once: they hold the entry's lock in turn (the first trains, the others then
    restore), and stale ``*.orbax-checkpoint-tmp`` folders are removed under the lock.
    """
    if not callable(build_model):
        raise TypeError(f"build_model must be a callable returning a model, got {build_model!r}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    root = pathlib.Path(cache_dir or os.environ.get("INVERSION_CACHE") or DEFAULT_CACHE_DIR)
    key = cache_key(model_config, config, train_data, eval_data)
    entry = root / key[:24]
    with entry_lock(entry):
        return _cached_train_locked(
            build_model,
            model_config,
            train_data,
            key=key,
            entry=entry,
            config=config,
            eval_data=eval_data,
            retrain=retrain,
            progress=progress,
        )


_LOCK_NAME = ".lock"


@contextlib.contextmanager
def entry_lock(entry: pathlib.Path):
    """An exclusive ``flock`` on ``entry/.lock`` (blocking) for the duration of the block.

    The lock file is never deleted (clearing an entry keeps it), so every process locks the same
    inode; the kernel drops the lock when its holder exits, also when it is killed.
    """
    entry.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(entry / _LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _clear_entry(entry: pathlib.Path) -> None:
    """Delete everything in a cache entry except its lock file (held by the caller)."""
    for child in entry.iterdir():
        if child.name == _LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _remove_stale_tmp(directory: pathlib.Path) -> None:
    """Delete unfinished orbax saves (``<step>.orbax-checkpoint-tmp``) left by a killed writer.

    Only called under the entry's lock, when no other process can be writing there.
    """
    if directory.is_dir():
        for tmp in directory.glob(f"*{ocp.path.atomicity_types.TMP_DIR_SUFFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _cached_train_locked(
    build_model, model_config, train_data, *, key, entry, config, eval_data, retrain, progress
):
    model_dir = entry / "model"
    if retrain:
        _clear_entry(entry)
    elif available_steps(model_dir):
        try:
            model = restore_model(model_dir, nnx.eval_shape(build_model))
            meta = load_metadata(model_dir)
            if not isinstance(meta, dict) or not isinstance(meta.get("history"), dict):
                raise CheckpointError(
                    f"cache entry {model_dir.absolute()} is corrupted: expected a 'history' dict "
                    f"in its metadata, got {meta!r:.200}"
                )
            return TrainResult(model, meta["history"], from_cache=True)
        except CheckpointError as err:
            warnings.warn(
                f"discarding the damaged cache entry {entry}: {err}; retraining",
                RuntimeWarning,
                stacklevel=3,
            )
            _clear_entry(entry)
    shutil.rmtree(model_dir, ignore_errors=True)  # an unfinished or unlisted save, if any
    train_dir = entry / "train"
    _remove_stale_tmp(train_dir)
    try:
        result = train(
            build_model(),
            train_data,
            config=config,
            eval_data=eval_data,
            checkpoint_dir=train_dir,
            progress=progress,
        )
    except CheckpointError as err:
        warnings.warn(
            f"discarding the damaged training checkpoint {train_dir}: {err}; "
            "training from the start",
            RuntimeWarning,
            stacklevel=3,
        )
        shutil.rmtree(train_dir, ignore_errors=True)
        result = train(
            build_model(),
            train_data,
            config=config,
            eval_data=eval_data,
            checkpoint_dir=train_dir,
            progress=progress,
        )
    save_model(
        model_dir,
        result.model,
        step=config.steps,
        metadata={
            "history": result.history,
            "model_config": model_config,
            "train_config": config.to_dict(),
            "key": key,
        },
    )
    shutil.rmtree(train_dir, ignore_errors=True)
    return result
