"""Resumable inversion of a whole data set, chunk by chunk, in one or several processes.

:func:`invert_dataset` cuts the targets into chunks of ``chunk_rows`` rows, solves each chunk
with :func:`inversion.invert_batch` and writes its results to ``out_dir`` before the next one
starts, so memory stays bounded by one chunk and an interrupted run loses at most the chunk in
flight. Running the same call again skips the finished chunks (after checking their
checksums) and ends with the same results as an uninterrupted run: a chunk is solved by the
same program on the same rows either way.

Layout of ``out_dir`` (readable with NumPy alone)::

    manifest.json                   format version, the options' fingerprint, chunk size, the
                                    writing run's id, and per chunk its rows and the SHA-256
                                    of each of its files
    chunk-000000-p000.npz           rows, x, loss, residual, steps, status_code of chunk 0
    ...                             (p: the process that wrote it)
    .lock                           the writer lock (never deleted, so every run locks the
                                    same file)

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

One writer at a time. A run holds an exclusive, non-blocking ``fcntl.flock`` on
``out_dir/.lock`` from its start (before ``fn`` is traced) to its end; a second run on the same
``out_dir`` (another process, or another call in this one) is refused at once with a
``ValueError`` naming ``out_dir`` and the holder, and writes nothing. In a run of several
processes, process 0 takes the lock and the others go on only when the first collective says
their own process 0 holds it. The kernel drops the lock when its holder exits, also on SIGKILL.
Where ``flock`` does not exist or does not work (not POSIX, some network file systems), a
second check keeps results apart: the run claims the manifest with a random run id (a new
manifest is created exclusively, with ``os.link``), and before every later write it re-reads
the manifest and stops with a ``ValueError`` if another run's id is there. A chunk file that
the other run overwrote no longer matches its checksum, which loading detects.

Checks before work: ``out_dir`` is created and probed for writing (by every process) before
anything is traced or compiled; each batch of an iterable must have the first batch's trailing
shape (a ``ValueError`` names the batch index and both shapes); a non-finite target is refused
with its global row index, before its chunk is solved.

Checks on load (:func:`load_dataset_result`, and the :class:`DatasetResult` that
:func:`invert_dataset` returns): a manifest of another format version, with overlapping chunks
or with chunks that do not match ``chunk_rows``, is refused with a ``ValueError``; a chunk
whose files are missing counts as not done (``complete`` is then False, ``missing`` lists its
rows); every file is checked against its SHA-256 when a field first reads it (a ``ValueError``
names the file), and the rows it holds must be the chunk's rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import os
import pathlib
import re
import secrets
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from inversion import checks
from inversion.engine import DEFAULT_SOLVER, invert_batch
from inversion.objective import Objective
from inversion.options import Execution, Problem, Starts, from_keywords
from inversion.result import STATUS_NAMES

try:
    import fcntl
except ImportError:  # not POSIX: no flock; the run id in the manifest still keeps runs apart
    fcntl = None

MANIFEST = "manifest.json"
LOCK = ".lock"
_SHA256 = re.compile("[0-9a-f]{64}")
FIELDS = ("x", "loss", "residual", "steps", "status_code")
VERSION = 1


def sha256_file(path: pathlib.Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
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


def atomic_savez(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary name, fsync, then rename into place (atomic on POSIX)."""
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


def fingerprint(
    fn,
    target_example: Any,
    *,
    x0: Any = None,
    solver: Any = None,
    steps: int = 500,
    tol: float | None = None,
    problem: Problem | None = None,
    starts: Starts | None = None,
    execution: Execution | None = None,
    chunk_rows: int | None = None,
) -> str:
    """SHA-256 of what determines the results: the program of one solver step (``fn``, loss,
    regularizers, bounds and solver, as a jaxpr with its constants, e.g. the weights) and every
    other option that changes a row's answer (steps, tol, the starts: ``x0`` or key, scale,
    restarts and shape; the loop, time limit and chunk size). Equal fingerprints mean the same
    computation on the same targets gives the same results."""
    solver = DEFAULT_SOLVER if solver is None else solver
    problem = Problem() if problem is None else problem
    starts = Starts() if starts is None else starts
    execution = Execution() if execution is None else execution
    y = jnp.asarray(target_example)
    x_shape = starts.x_shape
    if x_shape is None:
        if x0 is None:
            raise ValueError(
                "give x0 or starts=Starts(x_shape=...) (one input's shape); got neither"
            )
        x_shape = tuple(np.shape(x0)[2 if starts.restarts > 1 else 1 :])

    def one_step(x, y):
        objective = Objective(
            fn, y, loss=problem.loss, regularizers=problem.regularizers, bounds=problem.bounds
        )
        return solver.step(objective, x, solver.init(objective, x))

    closed = jax.make_jaxpr(one_step)(jnp.zeros(x_shape, jnp.float32), y)
    h = hashlib.sha256()
    h.update(str(closed.jaxpr).encode())
    for const in closed.consts:
        _hash_array(h, const)
    h.update(type(solver).__name__.encode())  # its hyperparameters are in the jaxpr
    for name, value in (("x0", x0), ("key", starts.key)):
        if value is not None:
            h.update(name.encode())
            _hash_array(h, value)
    options = dict(
        steps=steps, tol=tol, x_shape=x_shape, init_scale=starts.init_scale,
        restarts=starts.restarts, loop=execution.loop, time_limit=execution.time_limit,
        chunk=execution.chunk, chunk_rows=chunk_rows,
    )  # fmt: skip
    for name in sorted(options):
        h.update(f"{name}={options[name]!r}".encode())
    return h.hexdigest()


def _targets_sha(batch: np.ndarray) -> str:
    h = hashlib.sha256()
    _hash_array(h, batch)
    return h.hexdigest()


def _batches(targets, chunk_rows: int) -> Iterator[np.ndarray]:
    """Chunks of ``chunk_rows`` rows (the last may be shorter) from an array, a memmap or an
    iterable of batches (re-cut to the chunk size; every batch must have the first one's
    trailing shape)."""
    if isinstance(targets, np.ndarray | jax.Array):
        for start in range(0, targets.shape[0], chunk_rows):
            yield np.asarray(targets[start : start + chunk_rows])
        return
    pending: list[np.ndarray] = []
    have = 0
    first_shape = None
    for i, batch in enumerate(targets):
        batch = np.asarray(batch)
        if batch.ndim < 1:
            raise ValueError(
                f"targets batch {i} has shape {batch.shape}; every batch of targets needs a "
                "leading (row) axis"
            )
        if first_shape is None:
            first_shape = batch.shape
        elif batch.shape[1:] != first_shape[1:]:
            raise ValueError(
                f"targets batch {i} has shape {batch.shape}, batch 0 has {first_shape}; every "
                f"batch must hold rows of shape {first_shape[1:]}"
            )
        pending.append(batch)
        have += batch.shape[0]
        while have >= chunk_rows:
            stacked = np.concatenate(pending, axis=0)
            yield stacked[:chunk_rows]
            rest = stacked[chunk_rows:]
            pending, have = ([rest] if rest.shape[0] else []), rest.shape[0]
    if have:
        yield np.concatenate(pending, axis=0)


def _check_finite(batch: np.ndarray, start: int) -> None:
    """A ``ValueError`` naming the global row index of the first non-finite target."""
    if not np.issubdtype(batch.dtype, np.inexact):
        return
    finite = np.isfinite(batch.reshape(batch.shape[0], -1)).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"targets row {start + row} holds a non-finite value (NaN or inf); every target "
            "must be finite"
        )


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


def _on_process0(action, out_dir: pathlib.Path) -> None:
    """Run ``action`` on process 0; every process raises if it failed (one collective)."""
    error = None
    if jax.process_index() == 0:
        try:
            action()
        except (OSError, ValueError) as err:
            error = err
    if not _all_agree(error is None):
        raise error or ValueError(
            f"process 0 failed to write {out_dir / MANIFEST} (see its error); this run stops"
        )


def _try_flock(fd: int) -> bool:
    """An exclusive, non-blocking ``flock`` on ``fd``; False when another open file holds it.
    True where there is no ``flock`` (then only the run id keeps runs apart)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without flock
        return True
    return True


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # drops the flock


def _acquire(out_dir: pathlib.Path, run_id: str) -> int:
    """Create ``out_dir`` and take its writer lock; the descriptor holds it until closed."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ValueError(f"out_dir {out_dir} cannot be created or written: {err}") from err
    if not _try_flock(fd):
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(
            f"out_dir {out_dir} is being written by another run ({holder}); refusing to mix "
            "results: wait for that run to end, or use another out_dir"
        )
    try:  # who holds it, for the message above (flock only exists where pwrite does)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} run {run_id}".encode(), 0)
    except (OSError, AttributeError):
        pass
    return fd


def _open_out_dir(out_dir: pathlib.Path, run_id: str) -> int | None:
    """Process 0 creates ``out_dir`` and takes its writer lock; then every process checks that
    it can write there. Returns the lock's descriptor on process 0 (None on the others);
    raises the same ``ValueError`` on every process if any step fails."""
    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = _acquire(out_dir, run_id)
        except ValueError as err:
            error = err
    if not _all_agree(error is None):  # the others go on only under their own run's lock
        raise error or ValueError(
            f"out_dir {out_dir}: process 0 could not take the writer lock (see its error)"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-"):
            pass
    except OSError as err:
        error = ValueError(
            f"out_dir {out_dir} is not writable by process {jax.process_index()}: {err}"
        )
    if not _all_agree(error is None):
        _release(fd)
        raise error or ValueError(f"out_dir {out_dir} is not writable by another process")
    if fd is not None:
        for stale in out_dir.glob(".*.tmp-*"):  # left by a killed run (we hold the lock)
            stale.unlink(missing_ok=True)
    return fd


def _claim(out_dir: pathlib.Path, manifest: dict, previous: dict | None) -> None:
    """Write ``manifest`` (whose ``writer`` is this run's id) as the run's first write: a new
    manifest is created exclusively; an existing one must still be the one read before."""
    path = out_dir / MANIFEST
    data = json.dumps(manifest, indent=1).encode()
    if previous is None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        _atomic_write_bytes(tmp, data)
        try:
            os.link(tmp, path)  # fails if another run created it meanwhile
        except FileExistsError:
            raise ValueError(
                f"out_dir {out_dir} is being written by another run (it created {MANIFEST} "
                "meanwhile); refusing to mix results: use another out_dir"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return
    current = _read_manifest(out_dir)
    if current is None or current.get("writer") != previous.get("writer"):
        raise ValueError(
            f"out_dir {out_dir} is being written by another run ({path} changed meanwhile); "
            "refusing to mix results: use another out_dir"
        )
    _atomic_write_bytes(path, data)


def _write_manifest(out_dir: pathlib.Path, manifest: dict) -> None:
    """Replace the manifest, after checking that it is still this run's (same ``writer``)."""
    current = _read_manifest(out_dir, check=False)
    if not isinstance(current, dict) or current.get("writer") != manifest["writer"]:
        other = current.get("writer") if isinstance(current, dict) else None
        raise ValueError(
            f"{out_dir / MANIFEST} was taken over by another run (writer {other}) while this "
            f"run ({manifest['writer']}) was writing it; this run stops so that results are "
            "not mixed: use another out_dir"
        )
    _atomic_write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(path: pathlib.Path, m: Any) -> dict:
    """``m`` if it is a manifest this code wrote (version, chunk rows, file names, checksums,
    no overlapping chunks), else a ``ValueError`` naming what is wrong."""

    def bad(what: str):
        return ValueError(f"{path} is not a valid invert_dataset manifest: {what}")

    if not isinstance(m, dict):
        raise bad(f"expected a JSON object, got {type(m).__name__}")
    if m.get("version") != VERSION:
        raise ValueError(
            f"{path} has format version {m.get('version')!r}; this code reads version "
            f"{VERSION}: read it with the version that wrote it, or solve into another out_dir"
        )
    chunk_rows, n_rows, chunks = m.get("chunk_rows"), m.get("n_rows"), m.get("chunks")
    if not _is_int(chunk_rows) or chunk_rows < 1:
        raise bad(f"chunk_rows is {chunk_rows!r}; expected an int >= 1")
    if n_rows is not None and (not _is_int(n_rows) or n_rows < 0):
        raise bad(f"n_rows is {n_rows!r}; expected an int >= 0 or null")
    if not isinstance(chunks, dict):
        raise bad(f"chunks is {type(chunks).__name__}; expected an object")
    spans = []
    for key, entry in chunks.items():
        rows = entry.get("rows") if isinstance(entry, dict) else None
        if not key.isdigit():
            raise bad(f"chunk key {key!r} is not a chunk index")
        if not (
            isinstance(rows, list) and len(rows) == 2 and all(map(_is_int, rows))
            and 0 <= rows[0] < rows[1]
        ):  # fmt: skip
            raise bad(f"chunk {key} has rows {rows!r}; expected [start, stop], 0 <= start < stop")
        files = entry.get("files")
        if not isinstance(files, dict) or not files:
            raise bad(f"chunk {key} lists no files")
        for name, digest in files.items():
            if pathlib.PurePath(name).name != name or name.startswith(".") or name == MANIFEST:
                raise bad(f"chunk {key} names the file {name!r}; expected a chunk file name")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise bad(f"chunk {key} file {name} has checksum {digest!r}; expected SHA-256")
        spans.append((rows[0], rows[1], int(key)))
    spans.sort()
    for (a0, b0, k0), (a1, b1, k1) in zip(spans, spans[1:], strict=False):
        if a1 < b0:
            raise ValueError(
                f"{path}: chunks {k0} (rows {a0}..{b0 - 1}) and {k1} (rows {a1}..{b1 - 1}) "
                "overlap; refusing to return rows twice: the manifest was edited or damaged"
            )
    for a, b, k in spans:
        if a != k * chunk_rows or b - a > chunk_rows:
            raise bad(
                f"chunk {k} records rows {a}..{b - 1}; with chunk_rows={chunk_rows} it holds "
                f"at most {chunk_rows} rows from row {k * chunk_rows}"
            )
        if n_rows is not None and b > n_rows:
            raise bad(f"chunk {k} records rows up to {b - 1}, beyond n_rows={n_rows}")
    return m


@dataclasses.dataclass(frozen=True)
class DatasetResult:
    """The results in ``out_dir``, read lazily (each property loads the chunk files).

    The manifest is checked when the object is made (format version, chunk rows, no
    overlapping chunks: else a ``ValueError``). A chunk counts as done when all its files
    exist. ``done`` holds the done rows' indices in increasing order, and ``x``, ``loss``,
    ``residual``, ``steps``, ``status_code`` (and ``status``, the names) their values in the
    same order; ``missing`` the rows not done (of ``n_rows``, or up to the last recorded row
    while ``n_rows`` is unknown); ``complete`` whether the run finished and every row is done
    (``n_rows`` is known once the targets have been read to the end). Every file is checked
    against its SHA-256 in the manifest the first time a field reads it (again if it changes
    on disk), and must hold exactly its chunk's rows: else a ``ValueError`` naming the file.
    """

    out_dir: pathlib.Path
    manifest: dict
    _verified: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                        compare=False)  # fmt: skip

    def __post_init__(self):
        object.__setattr__(self, "out_dir", pathlib.Path(self.out_dir))
        _check_manifest(self.out_dir / MANIFEST, self.manifest)

    def _chunks(self) -> list[tuple[int, dict]]:
        """The manifest's chunks whose files all exist, in row order."""
        chunks = sorted((int(k), v) for k, v in self.manifest["chunks"].items())
        return [(k, v) for k, v in chunks if all((self.out_dir / f).is_file() for f in v["files"])]

    @property
    def done(self) -> np.ndarray:
        rows = [np.arange(*c["rows"]) for _, c in self._chunks()]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    @property
    def missing(self) -> np.ndarray:
        ends = [c["rows"][1] for c in self.manifest["chunks"].values()]
        n = self.n_rows if self.n_rows is not None else max(ends, default=0)
        return np.setdiff1d(np.arange(n), self.done)

    @property
    def n_rows(self) -> int | None:
        return self.manifest.get("n_rows")

    @property
    def complete(self) -> bool:
        return (
            self.manifest.get("complete") is True and self.n_rows is not None
            and len(self.done) == self.n_rows
        )  # fmt: skip

    def _open(self, file: str, digest: str):
        """The ``np.load`` of one chunk file, its SHA-256 checked unless already checked for
        the same file on disk (inode, size, mtime)."""
        path = self.out_dir / file
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._verified.get(file) == key:
            return np.load(path)
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ValueError(
                f"{path} does not match its SHA-256 in {self.out_dir / MANIFEST}: it is "
                "damaged or was written by another run; run invert_dataset again to solve its "
                "chunk again"
            )
        self._verified[file] = key
        return np.load(io.BytesIO(raw))

    def _field(self, name: str) -> np.ndarray:
        parts = []
        for c, chunk in self._chunks():
            pieces = []
            for file, digest in chunk["files"].items():
                with self._open(file, digest) as data:
                    pieces.append((data["rows"], data[name]))
            rows = np.concatenate([p[0] for p in pieces])
            values = np.concatenate([p[1] for p in pieces])
            order = np.argsort(rows, kind="stable")
            if len(values) != len(rows) or not np.array_equal(
                rows[order], np.arange(*chunk["rows"])
            ):
                raise ValueError(
                    f"the files of chunk {c} in {self.out_dir} ({', '.join(chunk['files'])}) do "
                    f"not hold exactly its rows {chunk['rows'][0]}..{chunk['rows'][1] - 1}"
                )
            parts.append(values[order])
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


def _read_manifest(out_dir: pathlib.Path, *, check: bool = True) -> dict | None:
    """The manifest in ``out_dir``, checked by :func:`_check_manifest` unless ``check`` is
    False, or None if there is none."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # ours is replaced atomically
        raise ValueError(f"{path} is not a manifest written by invert_dataset: {err}") from err
    return _check_manifest(path, manifest) if check else manifest


def load_dataset_result(out_dir: str | os.PathLike) -> DatasetResult:
    """The (finished or partial) results of :func:`invert_dataset` in ``out_dir``.

    Raises ``ValueError`` when ``out_dir`` holds no manifest, or one of another format
    version, or a damaged one (see :class:`DatasetResult` for the checks on reading)."""
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
        if digest is None or not (out_dir / file).exists() or sha256_file(out_dir / file) != digest:
            return False
    return True


def invert_dataset(
    fn,
    targets: np.ndarray | jax.Array | Iterable[np.ndarray],
    *,
    out_dir: str | os.PathLike,
    chunk_rows: int = 256,
    x0: Any = None,
    x0_shared: Any = None,
    solver: Any = None,
    steps: int = 500,
    tol: float | None = None,
    problem: Problem | None = None,
    starts: Starts | None = None,
    execution: Execution | None = None,
    **deprecated: Any,
) -> DatasetResult:
    """Invert every row of ``targets`` like :func:`inversion.invert_batch`, chunk by chunk,
    writing results to ``out_dir`` as they finish (see the module docstring).

    Args:
        fn: the per-target map, as for ``invert_batch``.
        targets: an array or NumPy memmap (``np.load(path, mmap_mode='r')``) with the targets
            along the leading axis, or an iterable of such batches (any sizes).
        out_dir: the results folder (created if needed); a second call resumes.
        chunk_rows: TARGETS per saved chunk (the unit of work lost by an interruption).
        x0: one start per target (needs ``targets`` as an array), or ``None``.
        x0_shared: one input, the start of every target (instead of ``x0``); memory then stays
            one chunk's worth for a stream of targets.
        solver, steps, tol, problem, starts, execution: as for ``invert_batch``. Without
            ``execution``, a progress bar (targets per second and, for arrays, the ETA) is
            shown; ``execution.chunk`` (targets solved at once) defaults to ``chunk_rows``.
            ``execution.mesh`` defaults to all devices of all processes when
            ``jax.distributed`` runs several.

    Returns:
        A :class:`DatasetResult` (what :func:`load_dataset_result` returns for ``out_dir``).

    Raises:
        ValueError: bad options; ``out_dir`` being written by another run, or not writable
            (both before ``fn`` is traced); a batch of targets of another width (naming its
            index); a non-finite target (naming its row); a manifest in ``out_dir`` from
            different options, another format version, or damaged.
        KeyboardInterrupt: after the finished chunks are saved (the chunk in flight is lost).
    """
    bar_default = execution is None and "progress" not in deprecated
    solver, problem, starts, execution = from_keywords(
        "invert_dataset", solver=solver, problem=problem, starts=starts, execution=execution,
        keywords=deprecated,
    )  # fmt: skip
    if bar_default:
        execution = dataclasses.replace(execution, progress=True)
    chunk_rows = checks.check_int("chunk_rows", chunk_rows, minimum=1)
    steps = checks.check_steps("steps", steps)
    tol = checks.check_tol("tol", tol)
    out_dir = pathlib.Path(out_dir)
    x0_all = x0
    if x0_shared is not None:
        if x0_all is not None:
            raise ValueError("give x0 (one start per target) or x0_shared (one for all), not both")
        checks.check_real_dtype("x0_shared", x0_shared)
        x0_shared = np.asarray(x0_shared)
    if x0_all is not None:
        checks.check_real_dtype("x0", x0_all)
        if not isinstance(targets, np.ndarray | jax.Array):
            raise ValueError("x0 (one start per target) needs targets as an array or memmap")
        if np.shape(x0_all)[0] != targets.shape[0]:
            raise ValueError(
                f"x0 has {np.shape(x0_all)[0]} starts for {targets.shape[0]} targets; "
                "expected one per target"
            )
    invert_options = dict(
        solver=solver, steps=steps, tol=tol, problem=problem, starts=starts, execution=execution
    )
    run_id = secrets.token_hex(8)
    lock = _open_out_dir(out_dir, run_id)  # before anything is traced or compiled
    try:
        return _invert_locked(fn, targets, out_dir, chunk_rows, x0_shared, x0_all, run_id,
                              invert_options)  # fmt: skip
    finally:
        _release(lock)


def _invert_locked(
    fn, targets, out_dir, chunk_rows, x0_shared, x0_all, run_id, invert_options
) -> DatasetResult:
    """The body of :func:`invert_dataset`, run while this run holds ``out_dir``'s lock."""
    execution = invert_options["execution"]
    progress = execution.progress
    if jax.process_count() > 1 and execution.mesh is None:
        execution = dataclasses.replace(
            execution, mesh=jax.sharding.Mesh(np.array(jax.devices()), ("rows",))
        )
    invert_options["execution"] = dataclasses.replace(execution, progress=False)
    n_rows = int(targets.shape[0]) if isinstance(targets, np.ndarray | jax.Array) else None
    chunks = _batches(targets, chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise ValueError("targets holds no rows")
    starts_x0 = x0_all if x0_all is not None else None if x0_shared is None else x0_shared[None]
    fp = fingerprint(fn, first[0], x0=starts_x0, chunk_rows=chunk_rows, **invert_options)

    process = jax.process_index()
    previous = _read_manifest(out_dir)
    if previous is not None and previous.get("fingerprint") != fp:
        raise ValueError(
            f"{out_dir / MANIFEST} was written by a run with different options (fn, solver, "
            f"steps, key, starts or chunk_rows={previous.get('chunk_rows')}); refusing to mix "
            "results: use another out_dir or the same options"
        )
    if previous is None:
        manifest = {"version": VERSION, "fingerprint": fp, "chunk_rows": chunk_rows,
                    "n_rows": n_rows, "processes": jax.process_count(), "chunks": {}}  # fmt: skip
    else:
        manifest = json.loads(json.dumps(previous))
        if manifest.get("n_rows") != n_rows:  # other targets' length: unknown until the end
            manifest.update(n_rows=None, complete=False)
    manifest["writer"] = run_id
    _on_process0(lambda: _claim(out_dir, manifest, previous), out_dir)
    bar = tqdm(total=n_rows, disable=not progress, desc="invert_dataset", unit="target")

    def solve_chunk(c: int, batch: np.ndarray) -> None:
        start = c * chunk_rows
        x0 = None
        if x0_all is not None:
            x0 = np.asarray(x0_all[start : start + batch.shape[0]])
        elif x0_shared is not None:
            x0 = np.broadcast_to(x0_shared, (batch.shape[0], *x0_shared.shape))
        opts = dict(invert_options)
        if opts["execution"].chunk is None:  # the whole saved chunk at once
            opts["execution"] = dataclasses.replace(opts["execution"], chunk=batch.shape[0])
        result = invert_batch(fn, batch, x0, **opts)
        rows = _owned_rows(result.x)
        arrays = {"rows": (start + rows).astype(np.int64)}
        for name in FIELDS:
            arrays[name] = _local_rows(getattr(result, name), rows)
        file = f"chunk-{c:06d}-p{process:03d}.npz"
        atomic_savez(out_dir / file, arrays)
        digests = _gather([sha256_file(out_dir / file)])
        files = {f"chunk-{c:06d}-p{p:03d}.npz": d[0] for p, d in enumerate(digests)}
        manifest["chunks"][str(c)] = {
            "rows": [start, start + int(batch.shape[0])],
            "targets_sha256": _targets_sha(batch),
            "files": files,
        }
        _on_process0(lambda: _write_manifest(out_dir, manifest), out_dir)

    c = -1
    try:
        for c, batch in enumerate(itertools.chain([first], chunks)):
            _check_finite(batch, c * chunk_rows)
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
                    stacklevel=3,
                )
            manifest["chunks"].pop(str(c), None)  # missing or corrupted: solve it again
            solve_chunk(c, batch)
            bar.update(batch.shape[0])
    finally:
        bar.close()
    for stale in [k for k in manifest["chunks"] if int(k) > c]:  # from a longer earlier run
        manifest["chunks"].pop(stale)
    total = sum(e["rows"][1] - e["rows"][0] for e in manifest["chunks"].values())
    manifest.update(n_rows=total if n_rows is None else n_rows, complete=True)
    _on_process0(lambda: _write_manifest(out_dir, manifest), out_dir)
    return DatasetResult(out_dir, manifest)
