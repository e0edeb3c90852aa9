"""Tests of models.checkpoint: exact round trips, clear errors for missing, mismatched and
corrupted checkpoints; and of the trained-model cache (models.cache)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.cache import cache_key, cached_train
from models.checkpoint import (
    CheckpointError,
    available_steps,
    load_metadata,
    restore_model,
    restore_tree,
    save_model,
    save_tree,
)
from models.data.scenes import synthetic_scenes
from models.training import TrainConfig

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fault_model import Tiny  # noqa: E402  (the small model the fault tests also use)


class Other(Tiny):
    pass


def leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model))]


@pytest.fixture(scope="module")
def data():
    return (
        synthetic_scenes(jax.random.key(0), 16, size=16),
        synthetic_scenes(jax.random.key(1), 8, size=16),
    )


CONFIG = TrainConfig(steps=6, batch_size=8, learning_rate=3e-2, eval_every=3)


# ------------------------------------------------------------------------- save / restore


def test_model_round_trip_into_abstract_and_concrete_templates(tmp_path):
    model = Tiny(seed=1)
    path = save_model(tmp_path / "ckpt", model, step=3, metadata={"note": "seed 1"})
    assert path == tmp_path / "ckpt" / "3" and available_steps(tmp_path / "ckpt") == [3]
    abstract = nnx.eval_shape(lambda: Tiny(seed=7))
    restored = restore_model(tmp_path / "ckpt", abstract)
    for a, b in zip(leaves(restored), leaves(model), strict=True):
        np.testing.assert_array_equal(a, b)
    x = jnp.linspace(0, 1, 64).reshape(1, 8, 8, 1)
    np.testing.assert_array_equal(restored(x), model(x))
    template = Tiny(seed=7)
    before = leaves(template)
    restored = restore_model(tmp_path / "ckpt", template, step=3)
    np.testing.assert_array_equal(leaves(restored)[0], leaves(model)[0])
    np.testing.assert_array_equal(leaves(template)[0], before[0])  # template untouched
    assert load_metadata(tmp_path / "ckpt") == {"note": "seed 1"}


def test_steps_are_kept_apart_and_a_step_is_replaced(tmp_path):
    save_model(tmp_path, Tiny(seed=1), step=0)
    save_model(tmp_path, Tiny(seed=2), step=5)
    save_model(tmp_path, Tiny(seed=3), step=5)  # replaces step 5
    assert available_steps(tmp_path) == [0, 5]
    template = Tiny()
    np.testing.assert_array_equal(
        leaves(restore_model(tmp_path, template, step=0))[0], leaves(Tiny(seed=1))[0]
    )
    np.testing.assert_array_equal(
        leaves(restore_model(tmp_path, template))[0], leaves(Tiny(seed=3))[0]
    )


def test_tree_round_trip_with_prng_key_and_keep(tmp_path):
    tree = {
        "w": jnp.arange(6.0).reshape(2, 3),
        "key": jax.random.key(3),
        "n": {"count": jnp.asarray(7, jnp.int32)},
    }
    for step in (1, 2, 3):
        save_tree(tmp_path, tree, step=step, metadata={"step": step}, keep=2)
    assert available_steps(tmp_path) == [2, 3]
    restored, meta = restore_tree(tmp_path, tree)
    assert meta == {"step": 3}
    np.testing.assert_array_equal(restored["w"], tree["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(tree["key"])
    )
    assert int(restored["n"]["count"]) == 7


def test_missing_checkpoints_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        restore_model(tmp_path / "nowhere", Tiny())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        restore_model(tmp_path / "empty", Tiny())
    save_model(tmp_path / "one", Tiny(), step=2)
    with pytest.raises(FileNotFoundError, match=r"step 4 .*available steps: \[2\]"):
        restore_model(tmp_path / "one", Tiny(), step=4)


def test_another_model_is_a_checkpoint_error(tmp_path):
    save_model(tmp_path, Tiny(width=4))
    with pytest.raises(CheckpointError, match="does not match the template.*k1"):
        restore_model(tmp_path, Tiny(width=5))
    with pytest.raises(CheckpointError, match="holds a Tiny, not a Other"):
        restore_model(tmp_path, Other())


def _array_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    files = [
        p
        for p in (step_dir / "state").rglob("*")
        if p.is_file() and (p.parent.name == "d" or p.name.startswith("manifest"))
    ]
    assert files, "expected tensorstore data files in the checkpoint"
    return files


# a failed tensorstore read can leave an orbax callback to a closed event loop in a background
# thread; pytest reports it as unraisable, and it is harmless
orbax_background = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@orbax_background
@pytest.mark.parametrize("damage", ["garbage", "truncate", "metadata", "checksum"])
def test_corrupted_checkpoint_is_a_checkpoint_error_naming_the_path(tmp_path, damage):
    step_dir = save_model(tmp_path, Tiny(seed=1), step=0)
    if damage == "metadata":
        (step_dir / "meta" / "metadata").write_bytes(b"\x00\x82not json")
    elif damage == "checksum":  # a consistent-looking file whose arrays do not match their sum
        meta_file = step_dir / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta["checksum"] = "0" * 64
        meta_file.write_text(json.dumps(meta))
    else:
        for f in _array_files(step_dir):
            size = f.stat().st_size
            if damage == "garbage":
                f.write_bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())
            else:
                f.write_bytes(f.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError, match=str(step_dir)) as info:
        restore_model(tmp_path, Tiny())
    assert isinstance(info.value, ValueError)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="step"):
        save_model(tmp_path, Tiny(), step=-1)
    with pytest.raises(TypeError, match="JSON"):
        save_model(tmp_path, Tiny(), metadata={"x": object()})
    with pytest.raises(TypeError, match="nnx.Module"):
        save_model(tmp_path, {"w": jnp.ones(2)})


# ------------------------------------------------------------------------- cache


def test_cached_train_trains_once_then_restores(tmp_path, data):
    train_set, test_set = data
    calls = []

    def build():
        calls.append(1)
        return Tiny(seed=2)

    first = cached_train(
        build,
        {"width": 4},
        train_set,
        config=CONFIG,
        eval_data=test_set,
        cache_dir=tmp_path,
        progress=False,
    )
    second = cached_train(
        build,
        {"width": 4},
        train_set,
        config=CONFIG,
        eval_data=test_set,
        cache_dir=tmp_path,
        progress=False,
    )
    assert not first.from_cache and second.from_cache
    assert second.history == json.loads(json.dumps(first.history))
    for a, b in zip(leaves(second.model), leaves(first.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(calls) == 2  # one real build, one abstract template (nnx.eval_shape)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and not (entries[0] / "train").exists()  # training ckpts removed

    other = cached_train(
        build,
        {"width": 4},
        train_set,
        config=dataclasses.replace(CONFIG, seed=1),
        cache_dir=tmp_path,
        progress=False,
    )
    again = cached_train(
        build,
        {"width": 4},
        train_set,
        config=CONFIG,
        eval_data=test_set,
        cache_dir=tmp_path,
        retrain=True,
        progress=False,
    )
    assert not other.from_cache and not again.from_cache and len(list(tmp_path.iterdir())) == 2


@orbax_background
def test_cached_train_uses_env_dir_and_retrains_a_damaged_entry(tmp_path, data, monkeypatch):
    train_set, _ = data
    monkeypatch.setenv("INVERSION_CACHE", str(tmp_path))
    first = cached_train(
        lambda: Tiny(seed=2), {"width": 4}, train_set, config=CONFIG, progress=False
    )
    (entry,) = tmp_path.iterdir()
    for f in _array_files(entry / "model" / str(CONFIG.steps)):
        f.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="damaged cache entry"):
        retrained = cached_train(
            lambda: Tiny(seed=2), {"width": 4}, train_set, config=CONFIG, progress=False
        )
    assert not retrained.from_cache
    np.testing.assert_array_equal(leaves(retrained.model)[0], leaves(first.model)[0])
    assert cached_train(
        lambda: Tiny(seed=2), {"width": 4}, train_set, config=CONFIG, progress=False
    ).from_cache


def test_cache_key_depends_on_everything_that_changes_the_model(data):
    train_set, test_set = data
    key = cache_key({"width": 4}, CONFIG, train_set)
    assert key == cache_key({"width": 4}, TrainConfig.from_json(CONFIG.to_json()), train_set)
    assert key != cache_key({"width": 5}, CONFIG, train_set)
    assert key != cache_key({"width": 4}, dataclasses.replace(CONFIG, steps=7), train_set)
    assert key != cache_key({"width": 4}, CONFIG, test_set)
    assert key != cache_key({"width": 4}, CONFIG, train_set, test_set)
    with pytest.raises(TypeError, match="JSON"):
        cache_key({"init": object()}, CONFIG, train_set)
    with pytest.raises(TypeError, match="TrainConfig"):
        cached_train(Tiny, {}, train_set, config={"steps": 3})
