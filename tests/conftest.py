"""Suite-wide set-up.

* One XLA:CPU device per core, as every experiment and benchmark asks for. ``inversion`` never
  changes JAX's configuration on import; the engine's multi-device CPU path (sharded batches,
  tests/inversion/test_sharding.py) needs the explicit call, made here before any test runs a
  JAX computation.
* XLA compiles with most optimisations off (JAX's own ``jax_disable_most_optimizations``: LLVM
  at -O0, no expensive passes), for this process and, through the environment, for the
  processes the tests start. The suite's small programs are compiled far more often than they
  run, so compilation is most of its time: on a 2-core AMD EPYC VM the whole suite took 750 s
  optimised and 629 s with this (tests/models/test_layers.py alone, on one core: 72 s and 26 s).
  The HLO, and so every result a test checks, is the one users run; only the machine code of
  the kernels differs. ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test`` runs the suite optimised.
"""

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

from inversion import cpu_devices  # noqa: E402

# in case a plugin imported JAX before the environment was set; JAX's truthy spellings
TRUE = ("1", "true", "t", "yes", "y", "on")
disable = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].strip().lower() in TRUE
jax.config.update("jax_disable_most_optimizations", disable)
cpu_devices.configure()
