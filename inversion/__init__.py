"""Recover inputs from outputs and measure what cannot be recovered.

Never imports ``models``: everything here takes pure callables ``fn(x) -> y`` and arrays.

Importing it changes nothing in JAX's configuration; for one XLA:CPU device per core (batched
inversion ~1.6x faster at batch 64 on 2 cores) call :func:`inversion.cpu_devices.configure`
before any JAX computation.
"""

from inversion import analysis, closed_form, cpu_devices, losses, metrics, regularizers, solvers
from inversion.dataset import DatasetResult, invert_dataset, load_dataset_result
from inversion.driver import solve
from inversion.engine import invert, invert_batch
from inversion.objective import Objective
from inversion.options import Execution, Problem, Starts
from inversion.result import STATUS_NAMES, Result
from inversion.visualize import visualize

__all__ = [
    "STATUS_NAMES",
    "Starts",
    "DatasetResult",
    "Execution",
    "Objective",
    "Problem",
    "Result",
    "analysis",
    "closed_form",
    "cpu_devices",
    "invert",
    "invert_batch",
    "invert_dataset",
    "load_dataset_result",
    "losses",
    "metrics",
    "regularizers",
    "solve",
    "solvers",
    "visualize",
]
