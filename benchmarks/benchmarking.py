"""Measurement plumbing for benchmarks: timing medians, the matmul peak, memory, the machine.

Nothing here is research; :mod:`benchmarks.throughput` uses these helpers to report how fast
the inversion engine runs. Conventions:

* a timing is the median of ``repeats`` wall-clock measurements (``time.perf_counter``) of a
  call that blocks until its result is ready; warm-up calls are made first and excluded;
* the matmul peak is ``2 n³ / t`` FLOP/s for one ``n × n`` float32 product (``n = 2048``), the
  median over several products: the attainable rate of this machine's best-tuned kernel, the
  yardstick for the fraction of peak that a workload reaches;
* host memory is the resident set size (RSS) sampled every few milliseconds by a background
  thread while the workload runs (no tracemalloc, which does not see XLA's buffers); on an
  accelerator the device's ``peak_bytes_in_use`` is reported instead.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MATMUL_SIZE = 2048


def timed(fn: Callable[[], Any]) -> float:
    """Seconds taken by ``fn()``, blocking on its result (JAX arrays are awaited)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict:
    """``{'median': s, 'min': s, 'times': [s, ...]}`` over ``repeats`` calls after ``warmup``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        timed(fn)
    times = [timed(fn) for _ in range(repeats)]
    return {"median": statistics.median(times), "min": min(times), "times": times}


def matmul_peak(*, n: int = MATMUL_SIZE, repeats: int = 7, device: Any = None) -> dict:
    """The rate of one ``n × n`` float32 matrix product on ``device`` (default: the first).

    Returns ``{'gflops': median rate, 'gflops_best': best rate, 'seconds': median time, 'n': n}``
    with ``rate = 2 n³ / t``.
    """
    device = device or jax.devices()[0]
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), device)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32), device)
    product = jax.jit(jnp.matmul)
    t = median_time(lambda: product(a, b), repeats=repeats, warmup=2)
    flops = 2.0 * n**3
    return {
        "gflops": flops / t["median"] / 1e9,
        "gflops_best": flops / t["min"] / 1e9,
        "seconds": t["median"],
        "n": n,
    }


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Context manager measuring the peak memory used while its block runs.

    On CPU: ``peak_bytes`` is the highest RSS sampled (every ``interval`` seconds) and
    ``increase_bytes`` is that peak minus the RSS on entry. On an accelerator: the device's
    ``peak_bytes_in_use`` on exit (a high-water mark since the process started) and its increase
    over the value on entry. ``kind`` says which was measured.
    """

    def __init__(self, device: Any = None, interval: float = 0.002):
        self.device = device or jax.devices()[0]
        self.interval = interval
        self.peak_bytes = 0
        self.increase_bytes = 0
        self.kind = "host_rss" if self.device.platform == "cpu" else "device_peak_bytes_in_use"

    def _device_peak(self) -> int:
        stats = self.device.memory_stats() or {}
        return int(stats.get("peak_bytes_in_use", 0))

    def __enter__(self) -> PeakMemory:
        if self.kind == "host_rss":
            self._start = _rss_bytes()
            self.peak_bytes = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._start = self._device_peak()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self.kind == "host_rss":
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
        else:
            self.peak_bytes = self._device_peak()
        self.increase_bytes = max(self.peak_bytes - self._start, 0)


def max_rss_bytes() -> int:
    """The process's lifetime maximum RSS (``getrusage``; Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, memory, JAX and the backend's devices."""
    import jaxlib

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_bytes": mem,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device_count": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": load_average(),
    }


def describe(info: dict) -> str:
    """One line for a log: CPU model, cores, jax version, backend and devices."""
    mem = f", {info['memory_bytes'] / 2**30:.0f} GiB" if info.get("memory_bytes") else ""
    return (
        f"{info['cpu']} ({info['usable_cores']}/{info['cores']} cores{mem}), "
        f"jax {info['jax']}, backend {info['backend']} {info['devices']}, "
        f"load {info['load_average']}"
    )
