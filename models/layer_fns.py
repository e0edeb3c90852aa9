"""A model's named intermediates as one pure function of the input batch.

``inversion`` takes pure callables, never a model; :func:`activations_fn` is the bridge for
layer-wise analyses (``inversion.analysis.layerwise``): it turns a Flax model or an imported
network (:func:`models.from_onnx`, :func:`models.from_torch`) into ``fn(x) -> {name:
activation}`` for any subset of :func:`models.layer_names`, in forward order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from models.imported import ImportedModel
from models.pure import layer_names


def activations_fn(
    model, names: Sequence[str] | None = None
) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """Pure ``fn(x) -> {name: activation}`` of a batch ``x``: the intermediates ``names``
    (default all of :func:`models.layer_names`) in forward order, each with the batch axis
    first; ``fn(x)[name]`` equals ``models.activations(model, x)[name]``.

    The weights are closed over (constants of the trace), so ``fn`` is jit-, vmap- and
    grad-safe. An imported network stops after the last requested intermediate; a Flax model
    computes its whole forward pass (under ``jax.jit`` the unused layers are dead code).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import models
    >>> model = models.MLP(2, (3, 1), rngs=nnx.Rngs(0))
    >>> fn = activations_fn(model, ["act1", "out"])
    >>> {k: v.shape for k, v in fn(jnp.ones((5, 2))).items()}
    {'act1': (5, 3), 'out': (5, 1)}
    """
    known = layer_names(model)
    if names is None:
        chosen = list(known)
    else:
        if isinstance(names, str):
            raise TypeError(f"names must be a sequence of layer names, got the string {names!r}")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown layer {unknown[0]!r}; this model's layers are {known}")
        wanted = set(names)
        chosen = [name for name in known if name in wanted]
    if isinstance(model, ImportedModel):
        params, chosen_t = model.params, tuple(chosen)
        return lambda x: model.features(params, x, chosen_t)
    graphdef, params = nnx.split(model)

    def fn(x):
        acts = nnx.merge(graphdef, params).features(x)
        return {name: acts[name] for name in chosen}

    return fn
