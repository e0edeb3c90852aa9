"""A network brought in from another framework, as a pure JAX function of ``(params, x)``.

:func:`models.from_torch` and :func:`models.from_onnx` both return an :class:`ImportedModel`.
It holds the network's weights as a dict of JAX arrays (``params``) and a pure
``forward(params, x, names) -> {name: activation}`` that computes the named intermediates of a
batch in the network's own layout, stopping as soon as the last requested one is known (so
under ``jax.jit`` nothing after a cut is computed).

Around that core it applies the project's rules, so ``models.split``, ``models.layer_names``,
``models.feature_fn`` and ``models.activations`` treat it like a model of its own:

* **Layout.** With ``layout='NHWC'`` (the default) a 4-D input ``(b, h, w, c)`` is transposed
  to the network's ``(b, c, h, w)`` and every 4-D activation back to ``(b, h, w, c)``; other
  ranks pass through unchanged. ``layout='NCHW'`` keeps the network's own layout.
* **Dtype.** Floating weights are cast to the input's floating dtype inside the trace, so a
  float64 input (under ``jax.enable_x64``) runs in float64 end to end and ``certify`` gets a
  true float64 Jacobian; a float32 input runs on the float32 weights as imported.
* **Names.** ``layer_names()`` lists the network's intermediates in forward order (torch module
  paths, or ONNX value names) and ends with ``'out'``, the network's output; an intermediate
  the network itself calls ``'out'`` (``self.out = nn.Conv2d(...)``) is listed as ``'out:0'``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("NHWC", "NCHW")
OUT = "out"
#: The key under which an importer's ``forward`` returns the network's output (its own names
#: are torch module paths or ONNX value names, so an intermediate may itself be called 'out').
OUTPUT = ""
#: The public name of an intermediate the network itself calls 'out'.
OUT_RENAMED = "out:0"

#: ``forward(params, x_native, names) -> {name: activation in the native layout}``, with the
#: network's output under ``OUTPUT``.
Forward = Callable[[Mapping[str, jax.Array], jax.Array, tuple[str, ...]], dict[str, jax.Array]]


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def to_native(x, layout: str):
    """The project's layout to the network's (``NHWC -> NCHW`` for 4-D arrays)."""
    return jnp.transpose(x, (0, 3, 1, 2)) if layout == "NHWC" and x.ndim == 4 else x


def from_native(y, layout: str):
    """The network's layout to the project's (``NCHW -> NHWC`` for 4-D arrays)."""
    return jnp.transpose(y, (0, 2, 3, 1)) if layout == "NHWC" and jnp.ndim(y) == 4 else y


def native_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if layout == "NHWC" and len(shape) == 4:
        return (shape[0], shape[3], shape[1], shape[2])
    return shape


def cast_params(params, dtype):
    """Floating leaves of ``params`` cast to ``dtype``; other leaves unchanged."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, params)


class ImportedModel:
    """A network from another framework as a pure JAX model (see the module docstring).

    Attributes: ``params`` (dict of arrays, float32 as imported), ``layout``, ``source``
    (``'torch'`` or ``'onnx'``), ``input_shape`` (the expected input shape in ``layout``,
    ``None`` for a free axis, or ``None`` when unknown), and ``reference``: the network in its
    own runtime, used by :func:`models.conformance`.
    """

    def __init__(
        self,
        *,
        params: dict,
        forward: Forward,
        names: Sequence[str],
        layout: str,
        source: str,
        input_shape: Sequence[int | None] | None,
        reference,
        description: str = "",
    ):
        self.params = params
        self._forward = forward
        names = tuple(names)
        if OUT_RENAMED in names or OUTPUT in names:
            raise ValueError(f"the network has an intermediate called {OUT_RENAMED!r} or ''")
        public = tuple(OUT_RENAMED if name == OUT else name for name in names)
        self._names = public
        self._native = {**dict(zip(public, names, strict=True)), OUT: OUTPUT}
        self.layout = check_layout(layout)
        self.source = source
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.reference = reference
        self.description = description

    def __repr__(self) -> str:
        n = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(self.params))
        return (
            f"ImportedModel(source={self.source!r}, layout={self.layout!r}, "
            f"input_shape={self.input_shape}, parameters={n:,}, "
            f"layers={len(self._names) + 1}{', ' + self.description if self.description else ''})"
        )

    def layer_names(self) -> list[str]:
        """Intermediates in forward order, then ``'out'`` (an intermediate the network itself
        calls 'out' is listed as 'out:0')."""
        return [*self._names, OUT]

    def check_input(self, x) -> None:
        """``TypeError``/``ValueError`` for an input the network cannot take (before tracing)."""
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"x must be a floating-point array, got {dtype or type(x).__name__}")
        if self.input_shape is None:
            return
        shape, want = tuple(np.shape(x)), self.input_shape
        ok = len(shape) == len(want) and all(
            w is None or w == s for s, w in zip(shape, want, strict=False)
        )
        if not ok:
            free = tuple("*" if w is None else w for w in want)
            raise ValueError(
                f"x has shape {shape}, expected {free} in layout {self.layout!r} "
                f"('*' is free; the batch axis comes first)"
            )

    def features(self, params, x, names: Sequence[str] | None = None) -> dict[str, jax.Array]:
        """``{name: activation}`` (in ``layout``) for the requested names (all by default)."""
        known = self.layer_names()
        names = tuple(known if names is None else names)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown layer {unknown[0]!r}; this model's layers are {known}")
        self.check_input(x)
        params = cast_params(params, x.dtype)
        native = tuple(self._native[name] for name in names)
        acts = self._forward(params, to_native(x, self.layout), native)
        return {
            name: from_native(acts[n], self.layout) for name, n in zip(names, native, strict=True)
        }

    def apply(self, params, x) -> jax.Array:
        """The network's output for the batch ``x``: ``apply(params, x)``."""
        return self.features(params, x, (OUT,))[OUT]

    def __call__(self, x) -> jax.Array:
        return self.apply(self.params, x)
