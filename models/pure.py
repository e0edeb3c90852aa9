"""Pure forms of the models: functions of (params, x) that jit, vmap and grad compose with.

``nnx.split`` runs once, outside any hot loop; the returned functions merge the graph
definition with the given parameters inside the trace, so the inversion engine only ever
sees ``fn(params, x) -> y``. :func:`per_example` turns such a batch-first function into the
map of one example that ``inversion.invert`` and ``inversion.analysis.certify`` take, and
:func:`jitted` compiles a model's method with its weights as constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from models.imported.model import ImportedModel


def _check_module(model) -> None:
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(f"expected a callable flax.nnx.Module, got {type(model).__name__}")


def _check_model(model) -> None:
    if not isinstance(model, nnx.Module) or not hasattr(model, "features"):
        raise TypeError(
            f"expected a models.* module with a features() method, got {type(model).__name__}"
        )


def split(model) -> tuple[Callable[[nnx.State, jax.Array], jax.Array], nnx.State]:
    """``(apply_fn, params)`` with ``apply_fn(params, x) == model(x)``, for any callable NNX
    module (U-Nets, MLPs, flows, decoders) and for networks brought in by ``from_torch`` /
    ``from_onnx`` (``params`` then a dict of arrays)."""
    if isinstance(model, ImportedModel):
        return model.apply, model.params
    _check_module(model)
    graphdef, params = nnx.split(model)

    def apply_fn(params, x):
        return nnx.merge(graphdef, params)(x)

    return apply_fn, params


def per_example(
    apply_fn: Callable[[Any, jax.Array], jax.Array], params
) -> Callable[[jax.Array], jax.Array]:
    """The map of one example of a batch-first model: ``fn(x) = apply_fn(params, x[None])[0]``.

    ``apply_fn(params, X)`` maps a batch ``X`` of shape ``(b, *s)`` to ``(b, *t)`` (the
    convention of :func:`split` and :func:`feature_fn`); ``fn`` maps one input of shape ``s``
    to its output of shape ``t``, as a batch of one. For a network whose examples do not
    interact (no batch statistics), ``jax.vmap(fn)(X) == apply_fn(params, X)``. ``fn`` is
    pure (``params`` are closed over) and composes with ``jit``, ``vmap`` and ``grad``.

    >>> import jax.numpy as jnp
    >>> fn = per_example(lambda p, X: X.sum(axis=1) * p, 2.0)
    >>> fn(jnp.array([1.0, 2.0])).item()
    6.0
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {apply_fn!r}")

    def fn(x):
        return apply_fn(params, x[None])[0]

    return fn


def jitted(model, method: str = "__call__") -> Callable[[jax.Array], jax.Array]:
    """``jax.jit(x ↦ model.<method>(x))`` with the model's state as constants of the program
    (split once with ``nnx.split``, merged inside the trace), e.g. ``jitted(flow, 'inverse')``."""
    _check_module(model)
    if not callable(getattr(model, method, None)):
        raise ValueError(f"{type(model).__name__} has no method {method!r}")
    graphdef, state = nnx.split(model)
    return jax.jit(lambda x: getattr(nnx.merge(graphdef, state), method)(x))


def layer_names(model) -> list[str]:
    """The stable names of the model's intermediates, in forward order (the last is ``out``).

    For an imported network: torch module paths, or ONNX value names."""
    if isinstance(model, ImportedModel):
        return model.layer_names()
    _check_model(model)
    return model.layer_names()


def feature_fn(model, name: str) -> tuple[Callable[[nnx.State, jax.Array], jax.Array], nnx.State]:
    """``(fn, params)`` with ``fn(params, x)`` the activation called ``name`` for input x.

    Under ``jax.jit`` the layers after ``name`` are dead code and are not computed.
    """
    names = layer_names(model)
    if name not in names:
        raise ValueError(f"unknown layer {name!r}; this model's layers are {names}")
    if isinstance(model, ImportedModel):
        return (lambda params, x: model.features(params, x, (name,))[name]), model.params
    graphdef, params = nnx.split(model)

    def fn(params, x):
        return nnx.merge(graphdef, params).features(x)[name]

    return fn, params


def activations(model, x) -> dict[str, jax.Array]:
    """Every named intermediate of ``model`` for input ``x``, from one forward pass.

    Returns ``{name: activation}`` with the names of :func:`layer_names` in forward order (the
    last is ``out``); each entry equals ``feature_fn(model, name)[0](params, x)``.
    """
    names = layer_names(model)
    if isinstance(model, ImportedModel):
        return model.features(model.params, x)
    acts = model.features(x)
    if list(acts) != names:
        raise RuntimeError(
            f"{type(model).__name__}.features returned {list(acts)}, not layer_names {names}"
        )
    return {name: acts[name] for name in names}


def count_parameters(model) -> int:
    """Number of trainable scalars (``nnx.Param`` leaves) in the model (any NNX module)."""
    _check_module(model)
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
