"""Solvers: small immutable objects with ``init``, ``step`` and ``terminate`` (see :mod:`.base`).

==========================  ===============================================================
``Optax(optimizer)``        any optax transformation, projected onto the bounds
``LBFGS()``                 projected L-BFGS with a projected Armijo line search
``LevenbergMarquardt()``    matrix-free LM: CG on ``A^T A + lam I``, gain-ratio damping
``GaussNewton()``           matrix-free truncated Gauss-Newton with a projected line search
==========================  ===============================================================

Drive one with :func:`inversion.solve` (pure, traceable) or pass it to
:func:`inversion.invert` / :func:`inversion.invert_batch` as ``solver=``.
"""

from inversion.solvers.active_set import ActiveSetPolish, ActiveSetState
from inversion.solvers.base import RUNNING, Solver
from inversion.solvers.cached_lbfgs import CachedLBFGS, CachedLBFGSState
from inversion.solvers.gauss_newton import GaussNewton, GaussNewtonState
from inversion.solvers.lbfgs import LBFGS, LBFGSState
from inversion.solvers.levenberg_marquardt import LevenbergMarquardt, LMState
from inversion.solvers.optax_solver import Optax, OptaxState

__all__ = [
    "LBFGS",
    "ActiveSetPolish",
    "ActiveSetState",
    "CachedLBFGS",
    "CachedLBFGSState",
    "RUNNING",
    "GaussNewton",
    "GaussNewtonState",
    "LBFGSState",
    "LMState",
    "LevenbergMarquardt",
    "Optax",
    "OptaxState",
    "Solver",
]
