"""Resumable inversion of a whole data set, chunk by chunk, in one or several processes.

:func:`invert_dataset` cuts the targets into chunks of ``chunk_rows`` rows, solves each chunk
with :func:`inversion.invert_batch` and writes its results to ``out_dir`` before the next one
starts, so memory stays bounded by one chunk and an interrupted run loses at most the chunk in
flight. Running the same call again skips the finished chunks (after checking their
checksums) and ends with the same results as an uninterrupted run: a chunk is solved by the
same program on the same rows either way.

Layout of ``out_dir`` (readable with NumPy alone)::

    manifest.json                   the options' fingerprint, chunk size, and per chunk its
                                    rows and the SHA-256 of each of its files
    chunk-000000-p000.npz           rows, x, loss, residual, steps, status_code of chunk 0
    ...                             (p: the process that wrote it)

Every file is written to a temporary name and renamed into place (atomic on POSIX), and the
manifest is rewritten (the same way) only after a chunk's files are complete, so a SIGKILL at
any moment leaves either the old or the new state. A chunk whose file is missing or does not
match its checksum is solved again; a chunk whose targets differ from the recorded ones
(their SHA-256 is in the manifest) is refused. A manifest written with different options (``fn``,
solver, steps, key, starts, chunk size: :func:`fingerprint`) is refused with a ``ValueError``;
results are never mixed.

Several processes (``jax.distributed.initialize`` before the call): every process passes the
same targets; the rows of each chunk are sharded over all processes' devices through one
global ``Mesh``; each process writes the rows its devices computed (``-pNNN`` files), the
checksums are gathered, and process 0 writes the one manifest. ``out_dir`` must be on a file
system every process sees (a shared file system on a cluster). Results are bitwise identical
to one process with as many devices: each device runs the same program on the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import pathlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from inversion.engine import invert_batch, resolve_solver
from inversion.objective import Objective
from inversion.result import STATUS_NAMES

MANIFEST = "manifest.json"
FIELDS = ("x", "loss", "residual", "steps", "status_code")
VERSION = 1
_OPTIONS = frozenset(inspect.signature(invert_batch).parameters) - {"fn", "targets", "progress"}


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_savez(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hash_array(h, a) -> None:
    a = np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def fingerprint(fn, target_example: Any, **invert_options) -> str:
    """SHA-256 of what determines the results: the program of one solver step (``fn``, loss,
    regularizers, bounds and solver, as a jaxpr with its constants, e.g. the weights) and every
    other option (steps, tol, key, starts, restarts, ...). Equal fingerprints mean the same
    computation on the same targets gives the same results."""
    options = dict(invert_options)
    solver = resolve_solver(
        options.pop("solver", None), options.pop("optimizer", None),
        options.pop("learning_rate", None),
    )  # fmt: skip
    y = jnp.asarray(target_example)
    x0 = options.get("x0")
    x_shape = tuple(options["x_shape"]) if options.get("x_shape") is not None else None
    if x_shape is None:
        if x0 is None:
            raise ValueError("give x0 or x_shape (one input's shape); got neither")
        lead = 2 if options.get("restarts", 1) > 1 else 1
        x_shape = tuple(np.shape(x0)[lead:])

    def one_step(x, y):
        objective = Objective(
            fn, y, loss=options.get("loss", "mse"), regularizers=options.get("regularizers", ()),
            bounds=options.get("bounds"),
        )  # fmt: skip
        return solver.step(objective, x, solver.init(objective, x))

    closed = jax.make_jaxpr(one_step)(jnp.zeros(x_shape, jnp.float32), y)
    h = hashlib.sha256()
    h.update(str(closed.jaxpr).encode())
    for const in closed.consts:
        _hash_array(h, const)
    h.update(type(solver).__name__.encode())
    for name in sorted(options):
        value = options[name]
        if name in ("x0", "key") and value is not None:
            h.update(name.encode())
            _hash_array(h, value)
        elif name in ("loss", "regularizers", "bounds", "mesh"):
            continue  # in the jaxpr, or (mesh) does not change the per-row results
        else:
            h.update(f"{name}={value!r}".encode())
    return h.hexdigest()


def _targets_sha(batch: np.ndarray) -> str:
    h = hashlib.sha256()
    _hash_array(h, batch)
    return h.hexdigest()


def _batches(targets, chunk_rows: int) -> Iterator[np.ndarray]:
    """Chunks of ``chunk_rows`` rows (the last may be shorter) from an array, a memmap or an
    iterable of batches (re-cut to the chunk size)."""
    if isinstance(targets, np.ndarray | jax.Array):
        for start in range(0, targets.shape[0], chunk_rows):
            yield np.asarray(targets[start : start + chunk_rows])
        return
    pending: list[np.ndarray] = []
    have = 0
    for batch in targets:
        batch = np.asarray(batch)
        if batch.ndim < 1:
            raise ValueError(f"every batch of targets needs a leading axis, got {batch.shape}")
        pending.append(batch)
        have += batch.shape[0]
        while have >= chunk_rows:
            stacked = np.concatenate(pending, axis=0)
            yield stacked[:chunk_rows]
            rest = stacked[chunk_rows:]
            pending, have = ([rest] if rest.shape[0] else []), rest.shape[0]
    if have:
        yield np.concatenate(pending, axis=0)


def _owned_rows(a: jax.Array) -> np.ndarray:
    """Row indices of ``a`` this process writes: those whose lowest-numbered holder is one of
    its devices (so replicated rows are written once)."""
    if not isinstance(a, jax.Array) or a.is_fully_addressable and jax.process_count() == 1:
        return np.arange(a.shape[0])
    owner = np.full(a.shape[0], np.iinfo(np.int64).max)
    for device, index in a.sharding.devices_indices_map(a.shape).items():
        rows = np.arange(a.shape[0])[index[0]]
        owner[rows] = np.minimum(owner[rows], device.process_index)
    return np.flatnonzero(owner == jax.process_index())


def _local_rows(a: jax.Array, rows: np.ndarray) -> np.ndarray:
    """``a[rows]`` on host, from this process's shards only."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        out = np.empty((len(rows), *a.shape[1:]), a.dtype)
        where = {int(r): i for i, r in enumerate(rows)}
        for shard in a.addressable_shards:
            for j, r in enumerate(np.arange(a.shape[0])[shard.index[0]]):
                if int(r) in where:
                    out[where[int(r)]] = np.asarray(shard.data[j])
        return out
    return np.asarray(a)[rows]


def _gather(values: list[str]) -> list[list[str]]:
    """Every process's list of hex digests (one collective; identity with one process)."""
    if jax.process_count() == 1:
        return [values]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(bytes.fromhex("".join(values)), np.uint8).reshape(len(values), 32)
    everyone = np.asarray(multihost_utils.process_allgather(raw))
    return [[bytes(row).hex() for row in proc] for proc in everyone]


def _all_agree(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.asarray([flag])))
    return bool(np.all(flags))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass(frozen=True)
class DatasetResult:
    """The results in ``out_dir``, read lazily (each property loads the chunk files).

    ``x``, ``loss``, ``residual``, ``steps``, ``status_code`` (and ``status``, the names) hold
    the finished rows in row order; ``done`` their row indices; ``complete`` whether every
    chunk of the run is finished (``n_rows`` is known once the targets have been read to the
    end).
    """

    out_dir: pathlib.Path
    manifest: dict

    @property
    def done(self) -> np.ndarray:
        rows = [np.arange(*c["rows"]) for _, c in sorted(self._chunks())]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    @property
    def n_rows(self) -> int | None:
        return self.manifest.get("n_rows")

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) and len(self.done) == self.n_rows

    def _chunks(self):
        return [(int(k), v) for k, v in self.manifest.get("chunks", {}).items()]

    def _field(self, name: str) -> np.ndarray:
        parts = []
        for _, chunk in sorted(self._chunks()):
            pieces = []
            for file in chunk["files"]:
                with np.load(self.out_dir / file) as data:
                    pieces.append((data["rows"], data[name]))
            rows = np.concatenate([p[0] for p in pieces])
            values = np.concatenate([p[1] for p in pieces])
            parts.append(values[np.argsort(rows, kind="stable")])
        if not parts:
            return np.zeros((0,))
        return np.concatenate(parts)

    @property
    def x(self) -> np.ndarray:
        return self._field("x")

    @property
    def loss(self) -> np.ndarray:
        return self._field("loss")

    @property
    def residual(self) -> np.ndarray:
        return self._field("residual")

    @property
    def steps(self) -> np.ndarray:
        return self._field("steps")

    @property
    def status_code(self) -> np.ndarray:
        return self._field("status_code")

    @property
    def status(self) -> np.ndarray:
        return np.asarray(STATUS_NAMES)[self.status_code]


def _read_manifest(out_dir: pathlib.Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:  # only a foreign file: ours is replaced atomically
        raise ValueError(f"{path} is not a manifest written by invert_dataset: {err}") from err


def load_dataset_result(out_dir: str | os.PathLike) -> DatasetResult:
    """The (finished or partial) results of :func:`invert_dataset` in ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise ValueError(f"{out_dir} holds no {MANIFEST}: not an invert_dataset output folder")
    return DatasetResult(out_dir, manifest)


def _chunk_ok(out_dir: pathlib.Path, entry: dict | None, mine: list[str]) -> bool:
    """Whether this process's files of a chunk exist and match the manifest's checksums."""
    if entry is None:
        return False
    for file in mine:
        digest = entry["files"].get(file)
        if digest is None or not (out_dir / file).exists() or _sha256(out_dir / file) != digest:
            return False
    return True


def invert_dataset(
    fn,
    targets: np.ndarray | jax.Array | Iterable[np.ndarray],
    *,
    out_dir: str | os.PathLike,
    chunk_rows: int = 256,
    progress: bool = True,
    x0_shared: Any = None,
    **invert_options,
) -> DatasetResult:
    """Invert every row of ``targets`` like :func:`inversion.invert_batch`, chunk by chunk,
    writing results to ``out_dir`` as they finish (see the module docstring).

    Args:
        fn: the per-target map, as for ``invert_batch``.
        targets: an array or NumPy memmap (``np.load(path, mmap_mode='r')``) with the targets
            along the leading axis, or an iterable of such batches (any sizes).
        out_dir: the results folder (created if needed); a second call resumes.
        chunk_rows: targets per chunk (the unit of work lost by an interruption).
        progress: a tqdm bar with targets per second and, for arrays, the ETA.
        x0_shared: one input, the start of every target (instead of ``x0`` with one start per
            target, which needs ``targets`` as an array); memory then stays one chunk's worth
            for a stream of targets.
        invert_options: any option of ``invert_batch`` (``solver``, ``steps``, ``bounds``,
            ``key``, ``x0`` with one start per target, ...). ``mesh`` defaults to all devices of
            all processes when ``jax.distributed`` runs several.

    Returns:
        A :class:`DatasetResult` (what :func:`load_dataset_result` returns for ``out_dir``).

    Raises:
        ValueError: bad options, or a manifest in ``out_dir`` from different options.
        KeyboardInterrupt: after the finished chunks are saved (the chunk in flight is lost).
    """
    unknown = set(invert_options) - _OPTIONS
    if unknown:
        raise TypeError(f"invert_dataset got unknown options {sorted(unknown)}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
    out_dir = pathlib.Path(out_dir)
    x0_all = invert_options.pop("x0", None)
    if x0_shared is not None:
        if x0_all is not None:
            raise ValueError("give x0 (one start per target) or x0_shared (one for all), not both")
        x0_shared = np.asarray(x0_shared)
    if x0_all is not None:
        if not isinstance(targets, np.ndarray | jax.Array):
            raise ValueError("x0 (one start per target) needs targets as an array or memmap")
        if np.shape(x0_all)[0] != targets.shape[0]:
            raise ValueError(
                f"x0 has {np.shape(x0_all)[0]} starts for {targets.shape[0]} targets; "
                "expected one per target"
            )
    if jax.process_count() > 1 and invert_options.get("mesh") is None:
        invert_options["mesh"] = jax.sharding.Mesh(np.array(jax.devices()), ("rows",))
    n_rows = int(targets.shape[0]) if isinstance(targets, np.ndarray | jax.Array) else None
    chunks = _batches(targets, chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise ValueError("targets holds no rows")
    fingerprint_options = dict(invert_options)
    if x0_all is not None:
        fingerprint_options["x0"] = x0_all
    elif x0_shared is not None:
        fingerprint_options["x0"] = x0_shared[None]
    else:
        fingerprint_options.setdefault("x_shape", invert_options.get("x_shape"))
    fp = fingerprint(fn, first[0], chunk_rows=chunk_rows, **fingerprint_options)

    process = jax.process_index()
    if process == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".*.tmp-*"):  # left by a killed run
            stale.unlink(missing_ok=True)
    _sync("invert_dataset:mkdir")
    manifest = _read_manifest(out_dir)
    if manifest is not None and manifest.get("fingerprint") != fp:
        raise ValueError(
            f"{out_dir / MANIFEST} was written by a run with different options (fn, solver, "
            f"steps, key, starts or chunk_rows={manifest.get('chunk_rows')}); refusing to mix "
            "results: use another out_dir or the same options"
        )
    if manifest is None:
        manifest = {"version": VERSION, "fingerprint": fp, "chunk_rows": chunk_rows,
                    "n_rows": n_rows, "processes": jax.process_count(), "chunks": {}}  # fmt: skip
    bar = tqdm(total=n_rows, disable=not progress, desc="invert_dataset", unit="target")

    def solve_chunk(c: int, batch: np.ndarray) -> None:
        start = c * chunk_rows
        opts = dict(invert_options)
        if x0_all is not None:
            opts["x0"] = np.asarray(x0_all[start : start + batch.shape[0]])
        elif x0_shared is not None:
            opts["x0"] = np.broadcast_to(x0_shared, (batch.shape[0], *x0_shared.shape))
        result = invert_batch(fn, batch, chunk=batch.shape[0], **opts)
        rows = _owned_rows(result.x)
        arrays = {"rows": (start + rows).astype(np.int64)}
        for name in FIELDS:
            arrays[name] = _local_rows(getattr(result, name), rows)
        file = f"chunk-{c:06d}-p{process:03d}.npz"
        _atomic_savez(out_dir / file, arrays)
        digests = _gather([_sha256(out_dir / file)])
        files = {f"chunk-{c:06d}-p{p:03d}.npz": d[0] for p, d in enumerate(digests)}
        manifest["chunks"][str(c)] = {
            "rows": [start, start + int(batch.shape[0])],
            "targets_sha256": _targets_sha(batch),
            "files": files,
        }
        if process == 0:
            _atomic_write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
        _sync(f"invert_dataset:chunk{c}")

    c = -1
    try:
        for c, batch in enumerate(itertools.chain([first], chunks)):
            mine = [f"chunk-{c:06d}-p{process:03d}.npz"]
            entry = manifest["chunks"].get(str(c))
            if entry is not None and entry.get("targets_sha256") != _targets_sha(batch):
                raise ValueError(
                    f"chunk {c} of {out_dir} was solved for other targets (rows "
                    f"{entry['rows'][0]}..{entry['rows'][1] - 1} differ); refusing to mix "
                    "results: use another out_dir"
                )
            if entry is not None:
                if _all_agree(_chunk_ok(out_dir, entry, mine)):
                    bar.update(batch.shape[0])
                    continue
                warnings.warn(
                    f"chunk {c} of {out_dir}: a file is missing or does not match its checksum; "
                    "solving it again",
                    RuntimeWarning,
                    stacklevel=2,
                )
            manifest["chunks"].pop(str(c), None)  # missing or corrupted: solve it again
            solve_chunk(c, batch)
            bar.update(batch.shape[0])
    finally:
        bar.close()
    total = sum(e["rows"][1] - e["rows"][0] for e in manifest["chunks"].values())
    manifest.update(n_rows=total if n_rows is None else n_rows, complete=True)
    for stale in [k for k in manifest["chunks"] if int(k) > c]:  # from a longer earlier run
        manifest["chunks"].pop(stale)
    if process == 0:
        _atomic_write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
    _sync("invert_dataset:done")
    return DatasetResult(out_dir, manifest)
