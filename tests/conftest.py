"""Suite-wide set-up: one XLA:CPU device per core, as every experiment and benchmark asks for.

``inversion`` never changes JAX's configuration on import; the engine's multi-device CPU path
(sharded batches, tests/inversion/test_sharding.py) needs the explicit call, made here before
any test runs a JAX computation.
"""

from inversion import cpu_devices

cpu_devices.configure()
