"""Recover inputs from outputs and measure what cannot be recovered.

Never imports ``models``: everything here takes pure callables ``fn(x) -> y`` and arrays.
"""

from inversion import analysis, closed_form, losses, metrics, regularizers
from inversion.engine import invert, invert_batch
from inversion.result import Result

__all__ = [
    "Result",
    "analysis",
    "closed_form",
    "invert",
    "invert_batch",
    "losses",
    "metrics",
    "regularizers",
]
