"""Agreement of an imported network with its own runtime, per dtype.

For an input ``x`` (in the model's layout) and each dtype, :func:`conformance` runs the JAX
function and the network's own runtime (``model.reference``: torch for a module, onnxruntime or
the ONNX reference evaluator for a file) on the same ``x`` and reports

* ``forward_max_abs = max |f_jax(x) - f_ref(x)|`` and
  ``forward_max_rel = forward_max_abs / max |f_ref(x)|`` (relative to the output's scale, so
  zero outputs, e.g. after a ReLU, do not blow it up);
* ``vjp_max_rel``: for a fixed random cotangent ``c``, ``max |J^T c - J_ref^T c| / max
  |J_ref^T c|`` when the runtime has gradients (torch autograd). A runtime without gradients
  (onnxruntime) is checked along ``directions`` random unit directions ``v`` instead:
  ``|<J^T c, v> - <c, (f_ref(x + h v) - f_ref(x - h v)) / 2h>|`` over ``|| J^T c ||``, the
  central difference taken on the float64 reference (``vjp_check`` says which was used).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from models.imported.model import ImportedModel, from_native, to_native

DTYPES = ("float32", "float64")


class Reference(Protocol):
    """The network in its own runtime, on arrays in the network's own layout."""

    name: str

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The output for ``x`` (float32 or float64), in ``x``'s dtype."""

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray | None:
        """``J^T cotangent`` at ``x``, or ``None`` when the runtime has no gradients."""


class DtypeConformance(NamedTuple):
    dtype: str
    forward_max_abs: float
    forward_max_rel: float
    vjp_max_rel: float | None
    vjp_check: str  # 'autograd', 'finite differences (k directions)' or why none was made


class Conformance(dict):
    """``{dtype: DtypeConformance}`` with a readable table as its repr."""

    def __init__(self, rows, *, reference: str, shape):
        super().__init__((row.dtype, row) for row in rows)
        self.reference = reference
        self.shape = tuple(shape)

    def __repr__(self) -> str:
        head = f"Conformance against {self.reference} at input shape {self.shape}"
        lines = [head, f"{'dtype':<9} {'fwd max abs':>12} {'fwd max rel':>12} {'vjp max rel':>12}"]
        for row in self.values():
            vjp = "—" if row.vjp_max_rel is None else f"{row.vjp_max_rel:.2e}"
            lines.append(
                f"{row.dtype:<9} {row.forward_max_abs:>12.2e} {row.forward_max_rel:>12.2e} "
                f"{vjp:>12}  ({row.vjp_check})"
            )
        return "\n".join(lines)


def _max_rel(a, b) -> float:
    scale = float(np.max(np.abs(b))) if np.size(b) else 0.0
    diff = float(np.max(np.abs(a - b))) if np.size(b) else 0.0
    return diff / scale if scale > 0 else diff


def _check(model, x, dtypes, directions) -> tuple[np.ndarray, tuple[str, ...]]:
    if not isinstance(model, ImportedModel):
        raise TypeError(
            f"model must be an ImportedModel (from models.from_torch / models.from_onnx), "
            f"got {type(model).__name__}"
        )
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    dtypes = tuple(dtypes)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {DTYPES}, got {dtypes!r}")
    if not isinstance(directions, int | np.integer) or directions < 1:
        raise ValueError(f"directions must be a positive integer, got {directions!r}")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise ValueError("x must be a finite floating-point array")
    model.check_input(x)
    return x, dtypes


def conformance(
    model: ImportedModel,
    x,
    *,
    dtypes=DTYPES,
    directions: int = 3,
    seed: int = 0,
) -> Conformance:
    """Forward and VJP agreement of ``model`` with its own runtime at ``x``, per dtype.

    Example (a model from ``models.from_torch``)::

        report = models.conformance(model, x)
        report["float64"].forward_max_rel  # e.g. 1e-16
    """
    x, dtypes = _check(model, x, dtypes, directions)
    rng = np.random.default_rng(seed)
    rows = []
    for dtype in dtypes:
        with jax.enable_x64(dtype == "float64"):
            xd = jnp.asarray(x, dtype)
            cot = rng.standard_normal(jax.eval_shape(model.apply, model.params, xd).shape)
            cot = cot.astype(dtype)
            y, grad = (np.asarray(a) for a in _value_and_vjp(model.apply, model.params, xd, cot))
            native_x = np.asarray(to_native(xd, model.layout))
            y_ref = np.asarray(from_native(model.reference.forward(native_x), model.layout))
            if y_ref.shape != y.shape:
                raise RuntimeError(f"reference output shape {y_ref.shape} != JAX {y.shape}")
            native_cot = np.asarray(to_native(jnp.asarray(cot), model.layout))
            grad_ref = model.reference.vjp(native_x, native_cot)
            if grad_ref is not None:
                grad_ref = np.asarray(from_native(jnp.asarray(grad_ref), model.layout))
                vjp_rel, how = _max_rel(grad, grad_ref), "autograd"
            else:
                vjp_rel, how = _directional(model, x, grad, cot, rng, directions, dtype)
        rows.append(
            DtypeConformance(
                dtype=dtype,
                forward_max_abs=float(np.max(np.abs(y - y_ref))) if y.size else 0.0,
                forward_max_rel=_max_rel(y, y_ref),
                vjp_max_rel=vjp_rel,
                vjp_check=how,
            )
        )
    return Conformance(rows, reference=model.reference.name, shape=x.shape)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_vjp(apply, params, x, cotangent):
    y, pullback = jax.vjp(lambda z: apply(params, z), x)
    return y, pullback(cotangent)[0]


def _directional(model, x, grad, cot, rng, directions, dtype):
    """Central differences of the float64 reference along random unit directions."""
    if dtype != "float64":
        return None, "no gradients in the runtime; checked by finite differences in float64"
    x64 = np.asarray(x, np.float64)
    h = 1e-6 * max(1.0, float(np.max(np.abs(x64))))
    scale = float(np.linalg.norm(grad)) or 1.0
    worst = 0.0
    for _ in range(directions):
        v = rng.standard_normal(x64.shape)
        v /= np.linalg.norm(v)
        ys = [
            np.asarray(
                from_native(
                    model.reference.forward(
                        np.asarray(to_native(jnp.asarray(x64 + s * v), model.layout))
                    ),
                    model.layout,
                )
            )
            for s in (h, -h)
        ]
        fd = float(np.sum(cot * (ys[0] - ys[1]) / (2 * h)))
        worst = max(worst, abs(float(np.sum(grad * v)) - fd) / scale)
    return worst, f"finite differences ({directions} directions)"
