"""Faults around checkpoints and the trained-model cache: concurrent writers, metadata that is
valid JSON but incomplete, and a process killed inside an orbax write (resumed bitwise)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.cache import cached_train
from models.checkpoint import CheckpointError, restore_model, save_model
from models.training import train

ROOT = pathlib.Path(__file__).resolve().parents[2]
TMP_SUFFIX = ".orbax-checkpoint-tmp"

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fault_model import CONFIG, DATA, Tiny, digest  # noqa: E402

# subprocesses import the same model, data and config
COMMON = f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n" + (
    "from fault_model import CONFIG, DATA, Tiny, digest\n"
)

CONCURRENT = COMMON + textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    from models.cache import cached_train

    cache, go = sys.argv[1], pathlib.Path(sys.argv[2])
    print("READY", flush=True)
    while not go.exists():  # both processes start training at the same moment
        time.sleep(0.005)
    result = cached_train(lambda: Tiny(seed=2), {"width": 4}, DATA, config=CONFIG,
                          cache_dir=cache, progress=False)
    print("RESULT" + json.dumps({"digest": digest(result.model),
                                 "from_cache": result.from_cache}), flush=True)
    """
)

KILLED = COMMON + textwrap.dedent(
    """
    import dataclasses, os, signal, sys
    import orbax.checkpoint._src.path.atomicity as atomicity
    from models.training import train

    kill_at = int(sys.argv[2])
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        # every array and the metadata are written, the rename to the final name is not done
        if self.get_final().name == str(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    train(Tiny(seed=2), DATA, config=CONFIG, checkpoint_dir=sys.argv[1], checkpoint_every=4,
          progress=False)
    """
)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("INVERSION_CACHE",)}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return env


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model))]


def _tmp_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob(f"*{TMP_SUFFIX}*")]


# ------------------------------------------------------------------------- concurrency


def test_two_processes_training_the_same_entry_both_succeed(tmp_path):
    """Both processes write ``train/<step>.orbax-checkpoint-tmp`` at once without the lock."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(tmp_path / "cache"), str(go)],
            env=_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "READY", p.stderr.read()[-4000:]
        go.touch()
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    results = [
        json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT"))[6:])
        for out, _ in outs
    ]
    assert results[0]["digest"] == results[1]["digest"]
    assert sorted(r["from_cache"] for r in results) == [False, True]  # one trained, one waited
    assert _tmp_dirs(tmp_path / "cache") == []
    # and the entry is intact: this process restores it, bitwise equal to what both returned
    again = cached_train(
        lambda: Tiny(seed=2),
        {"width": 4},
        DATA,
        config=CONFIG,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert again.from_cache and digest(again.model) == results[0]["digest"]


def test_stale_orbax_tmp_folders_are_removed_under_the_lock(tmp_path):
    first = cached_train(
        lambda: Tiny(seed=2), {"width": 4}, DATA, config=CONFIG, cache_dir=tmp_path, progress=False
    )
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    stale = entry / "train" / f"4{TMP_SUFFIX}"  # what a writer killed mid-save leaves
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"half a checkpoint")
    again = cached_train(
        lambda: Tiny(seed=2),
        {"width": 4},
        DATA,
        config=CONFIG,
        cache_dir=tmp_path,
        retrain=True,
        progress=False,
    )
    assert _tmp_dirs(tmp_path) == [] and (entry / ".lock").exists()
    for a, b in zip(_leaves(again.model), _leaves(first.model), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------- metadata


def _rewrite_meta(step_dir: pathlib.Path, edit) -> None:
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("key", ["manifest", "checksum", "metadata", "model"])
def test_metadata_lacking_a_key_is_a_checkpoint_error(tmp_path, key):
    step_dir = save_model(tmp_path, Tiny(seed=1), step=0, metadata={"note": 1})
    _rewrite_meta(step_dir, lambda meta: meta.pop(key))
    with pytest.raises(CheckpointError, match=rf"{step_dir}.*lacks the keys \['{key}'\]"):
        restore_model(tmp_path, Tiny())


def test_metadata_with_a_malformed_manifest_is_a_checkpoint_error(tmp_path):
    step_dir = save_model(tmp_path, Tiny(seed=1), step=0)
    _rewrite_meta(step_dir, lambda meta: meta.update(manifest=[["k1", 3]]))
    with pytest.raises(CheckpointError, match="manifest"):
        restore_model(tmp_path, Tiny())


@pytest.mark.parametrize("damage", ["no history", "no metadata key", "no manifest"])
def test_cached_train_retrains_an_entry_with_incomplete_metadata(tmp_path, damage):
    first = cached_train(
        lambda: Tiny(seed=2), {"width": 4}, DATA, config=CONFIG, cache_dir=tmp_path, progress=False
    )
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    edits = {
        "no history": lambda meta: meta["metadata"].pop("history"),
        "no metadata key": lambda meta: meta.pop("metadata"),
        "no manifest": lambda meta: meta.pop("manifest"),
    }
    _rewrite_meta(entry / "model" / str(CONFIG.steps), edits[damage])
    with pytest.warns(RuntimeWarning, match="damaged cache entry"):
        retrained = cached_train(
            lambda: Tiny(seed=2),
            {"width": 4},
            DATA,
            config=CONFIG,
            cache_dir=tmp_path,
            progress=False,
        )
    assert not retrained.from_cache
    for a, b in zip(_leaves(retrained.model), _leaves(first.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cached_train(
        lambda: Tiny(seed=2), {"width": 4}, DATA, config=CONFIG, cache_dir=tmp_path, progress=False
    ).from_cache


def test_training_checkpoint_without_history_is_a_checkpoint_error(tmp_path):
    config = dataclasses.replace(CONFIG, steps=4)
    train(Tiny(seed=2), DATA, config=config, checkpoint_dir=tmp_path, progress=False)
    _rewrite_meta(tmp_path / "4", lambda meta: meta["metadata"].pop("history"))
    with pytest.raises(CheckpointError, match="history"):
        train(Tiny(seed=2), DATA, config=config, checkpoint_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------- exact resume


class _Stop(Exception):
    pass


def _stop_at(step: int, error: BaseException):
    def callback(s, _record):
        if s == step:
            raise error

    return callback


@pytest.mark.parametrize("error", [KeyboardInterrupt(), _Stop("crash")])
def test_interrupted_training_resumes_bitwise(tmp_path, error):
    straight = train(Tiny(seed=2), DATA, config=CONFIG, progress=False)
    with pytest.raises(type(error)):
        train(
            Tiny(seed=2),
            DATA,
            config=CONFIG,
            checkpoint_dir=tmp_path,
            checkpoint_every=4,
            progress=False,
            callback=_stop_at(7, error),
        )
    resumed = train(
        Tiny(seed=9),
        DATA,
        config=CONFIG,
        checkpoint_dir=tmp_path,
        checkpoint_every=4,
        progress=False,
    )
    for a, b in zip(_leaves(resumed.model), _leaves(straight.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.history["loss"] == straight.history["loss"]


def test_kill_during_an_orbax_write_resumes_bitwise(tmp_path):
    """SIGKILL after step 8's arrays are written but before orbax renames its tmp folder."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, str(tmp_path), "8"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == -9, proc.stderr[-4000:]
    assert (tmp_path / "4").is_dir() and (tmp_path / f"8{TMP_SUFFIX}").is_dir()
    t0 = time.perf_counter()
    resumed = train(
        Tiny(seed=9),
        DATA,
        config=CONFIG,
        checkpoint_dir=tmp_path,
        checkpoint_every=4,
        progress=False,
    )
    straight = train(Tiny(seed=2), DATA, config=CONFIG, progress=False)
    assert time.perf_counter() - t0 < 60
    for a, b in zip(_leaves(resumed.model), _leaves(straight.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.history["loss"] == straight.history["loss"]
    assert _tmp_dirs(tmp_path) == []  # orbax replaced the stale folder when it saved step 8


def test_bitwise_helpers_see_a_difference():
    """The comparisons above are exact: a one-ulp change in one leaf is detected."""
    model = Tiny(seed=2)
    other = Tiny(seed=2)
    other.b[...] = jnp.nextafter(other.b[...], jnp.float32(1))
    assert digest(model) != digest(other)
