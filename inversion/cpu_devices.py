"""One XLA:CPU device per core, so that a batch of inversions runs data-parallel on a CPU.

XLA:CPU runs a program on one device with intra-op threads, and for the many small convolutions
of an inversion step those threads help little: on 2 cores the seed U-Net's Adam step at batch
64 took 94.6 ms on one CPU device with 2 threads, 103.5 ms pinned to one core, and 59.0 ms with
the rows split over two CPU devices (one per core, the engine's sharded path; BENCHMARKS.md). JAX fixes its number of CPU
devices when its backend starts, so :func:`configure` must run before the first JAX computation.
Importing ``inversion`` changes nothing: call it yourself, first thing in a script (every
``python -m experiments...`` and ``python -m benchmarks...`` entry point does, and so does the
test suite's ``tests/conftest.py``)::

    from inversion import cpu_devices
    cpu_devices.configure()        # before any JAX computation

It sets ``jax_num_cpu_devices`` to the number of usable cores unless

* a JAX computation has already run in this process (the backend then keeps its devices and the
  engine simply runs on one CPU device),
* the user chose the count: ``JAX_NUM_CPU_DEVICES`` / ``jax.config.jax_num_cpu_devices`` or
  ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``,
* ``INVERSION_CPU_DEVICES`` is set: to ``N`` for N devices, to ``1`` to keep a single device.

Only the CPU backend changes: on a GPU or TPU machine JAX's default devices are the same as
before, and code that does not shard still runs on ``jax.devices('cpu')[0]``.

:func:`cpu_mesh` is the engine's default mesh on CPU: all CPU devices, used when a batch has at
least :data:`MIN_ROWS_PER_DEVICE` row per device. Measured on 2 cores (seed U-Net Adam step,
ms per step on one device / split over two): 2 rows 4.04 / 2.84, 3 rows (padded to 4) 5.49 /
3.99, 4 rows 7.91 / 4.11, 8 rows 12.98 / 8.19 (BENCHMARKS.md). One row stays on one device.
"""

from __future__ import annotations

import os

import jax
import numpy as np

ENV = "INVERSION_CPU_DEVICES"
MIN_ROWS_PER_DEVICE = 1


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _user_chose() -> bool:
    return (
        jax.config.jax_num_cpu_devices >= 0
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    )


def requested() -> int | None:
    """The count asked for by ``$INVERSION_CPU_DEVICES`` (``None`` when unset or blank).

    Raises ``ValueError`` naming the variable unless it is a positive integer.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < 1:
        raise ValueError(
            f"the environment variable {ENV} must be a positive int (the number of CPU devices; "
            f"1 keeps a single device), got {value!r}"
        )
    return n


def configure(n: int | None = None) -> bool:
    """Ask JAX for ``n`` CPU devices (default: ``$INVERSION_CPU_DEVICES``, else one per usable
    core). Returns whether the setting was applied: ``False`` when the user already chose a
    count (``n`` not given) or when JAX's backend has started (then nothing changes)."""
    if n is None:
        env = requested()  # a bad value is an error even where the user chose otherwise
        if _user_chose():
            return False
        n = env or usable_cores()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of CPU devices) must be a positive int, got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend has started: its device count is fixed
        return False
    return True


def cpu_mesh(rows: int) -> jax.sharding.Mesh | None:
    """A 1-D mesh over every CPU device for a batch of ``rows`` rows, or ``None`` when there is a
    single CPU device or fewer than ``MIN_ROWS_PER_DEVICE`` rows per device."""
    devices = jax.devices("cpu")
    if len(devices) < 2 or rows < MIN_ROWS_PER_DEVICE * len(devices):
        return None
    return jax.sharding.Mesh(np.array(devices), ("cpu_rows",))
