"""Pure forms of the models: functions of (params, x) that jit, vmap and grad compose with.

``nnx.split`` runs once, outside any hot loop; the returned functions merge the graph
definition with the given parameters inside the trace, so the inversion engine only ever
sees ``fn(params, x) -> y``.
"""

from __future__ import annotations

from collections.abc import Callable

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
