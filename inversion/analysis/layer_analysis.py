"""Layer by layer: how much of the input does each intermediate activation of a network determine?

A network is given as one pure function of a batch, ``features(x) -> {name: Phi_l(x)}`` (its
named intermediates in forward order, each with the batch axis first; e.g. built on the model
side by ``models.activations_fn(model)``), and inputs ``x0_1 .. x0_N`` of dimension ``n``. For
every layer ``l`` (or a chosen subset) :func:`layerwise` measures two things.

**Certificates** (what the layer *can* determine). ``J_l = d Phi_l / d x`` at each ``x0_i`` is
taken in float64 (:func:`~inversion.analysis.certify_batch` on the dict of the layers: one
Jacobian per input for a whole group of layers, groups bounded by ``group_entries``). At each of
:data:`~inversion.analysis.PRECISIONS` (``'exact'``: ``sigma <= max(m, n) eps_64 sigma_1``;
``'float32'``: ``max(m, n) eps_32``; ``'8-bit'``: ``1/255``) the layer's nullity is the largest
over the inputs and its rank ``n - nullity`` the smallest. The **visible fraction**
``rank_exact / n = dim row(J_l) / n`` is the fraction of input directions the layer determines
to first order: the rest (the null space of ``J_l``) can move without changing ``Phi_l``. Also
reported: the largest condition number ``sigma_1 / sigma_n`` and the smallest ``sigma_n``.

**Inversion** (what an optimiser *does* recover; Mahendran & Vedaldi 2015). Each ``x0_i`` is
reconstructed from ``Phi_l(x0_i)`` by

    x_hat_il = argmin_{x in bounds}  ||Phi_l(x) - Phi_l(x0_i)||^2 / ||Phi_l(x0_i)||^2

from one shared start. All ``N x L`` (input, layer) pairs run as ONE batched engine call
(:func:`inversion.invert_batch`): ``fn(x) = [Phi_1(x), ..., Phi_L(x), 0_L]`` (flattened,
concatenated), row ``(i, l)`` has target ``[Phi(x0_i), e_l]`` and the loss
:func:`layer_selector_loss` restricts the normalised loss to the entries of layer ``l``. A
row's objective is exactly that of inverting ``Phi_l`` alone (the other layers' residuals have
weight 0, so their gradient is exactly 0), but the step compiles once instead of once per
layer. Reported per layer: the normalised feature error (the row's final objective; mean over
inputs), the image relative error ``||x_hat - x0|| / ||x0||`` (mean) and PSNR (median, since
exact recoveries give ~150 dB).

**Classes** (:data:`CLASSES`; a layer belongs to every class whose condition holds, and its
``verdict`` is the first of them in this order):

* ``lossy``: exact nullity > 0 (the network destroys input directions);
* ``lost_below_float32``: exact nullity 0, float32 nullity > 0 (the directions exist but no
  float32 computation can resolve them);
* ``optimiser_limited``: float32 nullity 0, yet image error > ``failed_error``: the input is
  determined, the optimiser did not find it;
* ``lost_at_8bit``: 8-bit nullity > 0 (not recoverable from 8-bit-accurate features);
* ``recovered``: image error <= ``failed_error``.

Without inversion (``invert=False``) ``optimiser_limited`` and ``recovered`` cannot be
decided; a layer with nullity 0 at every precision then has the verdict :data:`DETERMINED`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

import inversion
from inversion.analysis.certificate import PRECISIONS, certify_batch, summarize
from inversion.engine import invert_batch
from inversion.metrics import psnr, relative_error

#: The classes of a layer, in the order that picks its ``verdict`` (see the module docstring).
CLASSES = ("lossy", "lost_below_float32", "optimiser_limited", "lost_at_8bit", "recovered")
#: The verdict of a layer that loses no direction at any precision when it was not inverted.
DETERMINED = "determined"
#: Image relative error above which a reconstruction counts as failed.
FAILED_ERROR = 0.1


class LayerReport(NamedTuple):
    """One layer's certificate summary, inversion quality and class (module docstring).

    The inversion fields are ``None`` when the layer was not inverted (``invert=False``)."""

    name: str
    shape: tuple[int, ...]  # the activation of one input
    n_in: int  # input dimension n
    n_out: int  # activation dimension m
    nullity: dict[str, int]  # per precision: the largest over the inputs
    nullity_per_input: dict[str, list[int]]
    condition_number: float  # the largest over the inputs (inf when the exact nullity > 0)
    sigma_min: float  # the smallest over the inputs (0 when m < n)
    feature_error: float | None  # mean over inputs of the normalised feature error
    feature_error_per_input: np.ndarray | None
    relative_error: float | None  # mean over inputs of ||x_hat - x0|| / ||x0||
    relative_error_per_input: np.ndarray | None
    psnr: float | None  # median over inputs, dB
    psnr_per_input: np.ndarray | None
    classes: tuple[str, ...]  # every class of CLASSES whose condition holds, in that order
    verdict: str  # classes[0], or DETERMINED when there is none

    @property
    def rank(self) -> dict[str, int]:
        """Per precision, ``n - nullity``: the smallest rank over the inputs."""
        return {p: self.n_in - k for p, k in self.nullity.items()}

    @property
    def visible_fraction(self) -> float:
        """``rank_exact / n``: the fraction of input directions the layer determines to first
        order (at the input where it determines the fewest)."""
        return self.rank["exact"] / self.n_in

    @property
    def inverted(self) -> bool:
        return self.relative_error is not None

    def row(self) -> dict:
        """The layer as one flat, JSON-ready row (inversion fields ``None`` if not inverted)."""
        return {
            "layer": self.name,
            "shape": list(self.shape),
            "n_in": self.n_in,
            "n_out": self.n_out,
            **{f"rank_{_KEY[p]}": r for p, r in self.rank.items()},
            **{f"nullity_{_KEY[p]}": k for p, k in self.nullity.items()},
            "visible_fraction": self.visible_fraction,
            "condition_number": self.condition_number,
            "sigma_min": self.sigma_min,
            "feature_error": self.feature_error,
            "relative_error": self.relative_error,
            "psnr": self.psnr,
            "class": self.verdict,
        }


_KEY = {"exact": "exact", "float32": "float32", "8-bit": "8bit"}


@dataclasses.dataclass(frozen=True, repr=False)
class LayerwiseReport:
    """What :func:`layerwise` found: one :class:`LayerReport` per layer, in forward order.

    Index it by layer name (``report['enc1']``) or iterate over the layers; ``rows()`` gives
    flat dicts, ``by_class()`` the layers in each class, ``table()`` (also the ``repr``) a
    text table. ``x_hat``: the reconstructions, ``(N, L, *input shape)`` (``None`` without
    inversion)."""

    layers: dict[str, LayerReport]
    inputs: int  # N
    n_in: int  # input dimension n
    failed_error: float
    steps: int | None  # optimiser steps per reconstruction (None: not inverted)
    x_hat: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def __getitem__(self, name: str) -> LayerReport:
        return self.layers[name]

    def __iter__(self):
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)

    def rows(self) -> list[dict]:
        """:meth:`LayerReport.row` of every layer, in forward order."""
        return [layer.row() for layer in self]

    def by_class(self) -> dict[str, list[str]]:
        """``{class: [layer names]}`` for every class of :data:`CLASSES` (a layer may be in
        several; see the module docstring)."""
        return {c: [layer.name for layer in self if c in layer.classes] for c in CLASSES}

    def table(self) -> str:
        """A text table: rank at each precision (of ``n``), visible fraction, condition
        number, and (when inverted) feature error, image error, PSNR; then the verdict."""
        width = min(max([len("layer"), *(len(n) for n in self.layers)]), 40)
        head = (
            f"{'layer':<{width}}  {'shape':<14} {'rank exact/f32/8bit':>20} {'visible':>7} "
            f"{'cond':>8} {'feat err':>9} {'img err':>8} {'PSNR':>6}  class"
        )
        lines = [f"layerwise: {self.inputs} input(s), n = {self.n_in}", head]
        for layer in self:
            r = layer.rank
            ranks = f"{r['exact']}/{r['float32']}/{r['8-bit']}"
            if layer.inverted:
                inv = f"{layer.feature_error:9.2e} {layer.relative_error:8.3f} {layer.psnr:6.1f}"
            else:
                inv = f"{'-':>9} {'-':>8} {'-':>6}"
            shape = "x".join(map(str, layer.shape))
            lines.append(
                f"{layer.name[:width]:<{width}}  {shape:<14} {ranks:>20} "
                f"{layer.visible_fraction:7.3f} {layer.condition_number:8.1e} {inv}  "
                f"{layer.verdict}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()


def layer_shapes(
    features: Callable[[Array], Mapping[str, Array]], x: Float[Array, "N ..."]
) -> dict[str, tuple[int, ...]]:
    """``{name: shape of one input's activation}`` of ``features`` for inputs shaped like the
    batch ``x``, in ``features``' own (forward) order; nothing is computed (``jax.eval_shape``).
    Useful to choose layers of a large network, e.g. the last one at each resolution.

    >>> import jax.numpy as jnp
    >>> layer_shapes(lambda x: {"b": 2 * x, "a": x.sum(axis=1)}, jnp.zeros((3, 4)))
    {'b': (4,), 'a': ()}
    """
    shape, dtype = np.shape(x)[1:], jnp.asarray(x[:1]).dtype
    return {n: s.shape[1:] for n, s in _trace(features, shape, dtype).items()}


def _trace(features, shape, dtype) -> dict:
    """``features`` on one abstract input ``(1, *shape)``: ``{name: ShapeDtypeStruct}`` in the
    dict's own order (``jax.eval_shape`` returns dicts with sorted keys)."""
    order = []

    def probe(x):
        out = features(x)
        if not isinstance(out, Mapping):
            raise TypeError(
                f"features must return a dict {{name: activation}}, got {type(out).__name__}"
            )
        order[:] = list(out)
        return dict(out)

    out = jax.eval_shape(probe, jax.ShapeDtypeStruct((1, *shape), dtype))
    for name in order:
        leaf = out[name]
        if not hasattr(leaf, "shape") or len(leaf.shape) < 1 or leaf.shape[0] != 1:
            raise ValueError(
                f"features must keep the batch axis first: for a batch of 1 input, layer "
                f"{name!r} has shape {getattr(leaf, 'shape', type(leaf).__name__)}"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"layer {name!r} is not floating-point (dtype {leaf.dtype})")
    return {name: out[name] for name in order}


def layer_selector_loss(segment: np.ndarray) -> Callable[[Array, Array], Array]:
    """Normalised loss on one layer of stacked activations, the layer chosen by the target.

    ``segment[i]`` is the layer of entry ``i`` of the stacked vector (``D`` entries, ``L``
    layers). With ``target = [Phi(x0) (D entries), onehot(l) (L entries)]``, ``pred = [Phi(x),
    zeros(L)]`` and ``w_i = onehot[segment_i]`` the loss is
    ``sum_i w_i (Phi_i(x) - Phi_i(x0))^2 / sum_i w_i Phi_i(x0)^2`` (denominator 1 if zero):
    the normalised loss of layer ``l`` alone.

    >>> import jax.numpy as jnp
    >>> loss = layer_selector_loss(np.array([0, 0, 1]))
    >>> float(loss(jnp.array([1.0, 0.0, 5.0, 0.0, 0.0]), jnp.array([2.0, 0.0, 5.0, 1.0, 0.0])))
    0.25
    """
    seg = np.asarray(segment)
    if seg.ndim != 1 or not np.issubdtype(seg.dtype, np.integer) or seg.size == 0:
        raise ValueError(f"segment must be a non-empty 1-D integer array, got {seg!r}")
    seg, d = jnp.asarray(seg.astype(np.int32)), int(seg.size)

    def loss(pred, target):
        w = target[d:][seg]
        feats = target[:d]
        den = jnp.sum(w * feats**2)
        return jnp.sum(w * (pred[:d] - feats) ** 2) / jnp.where(den > 0, den, 1.0)

    return loss


def _check_inputs(x0, bounds):
    x = np.asarray(x0)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x0 must be a floating-point array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 1 or x.size == 0:
        raise ValueError(f"x0 must be a batch (N, ...) of N >= 1 inputs, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 must be finite, got NaN or inf entries")
    if bounds is not None:
        lo, hi = bounds
        if not lo < hi:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        if x.min() < lo or x.max() > hi:
            raise ValueError(
                f"x0 lies outside bounds {bounds!r} (range [{x.min()}, {x.max()}]); pass the "
                "bounds the inputs live in, or bounds=None"
            )
    return x


def _select(all_names, layers):
    if layers is None:
        return list(all_names)
    if isinstance(layers, str):
        raise TypeError(f"layers must be a sequence of layer names, got the string {layers!r}")
    layers = list(layers)
    unknown = [name for name in layers if name not in all_names]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r}; features returns {list(all_names)}")
    if len(set(layers)) != len(layers) or not layers:
        raise ValueError(f"layers must be distinct names, at least one, got {layers}")
    chosen = set(layers)
    return [name for name in all_names if name in chosen]  # forward order


def _groups(sizes: Sequence[int], n: int, limit: int) -> list[list[int]]:
    """Consecutive layers whose stacked Jacobian ``(sum m_l) x n`` has at most ``limit``
    entries (a layer larger than that is a group of its own)."""
    groups, rows = [[]], 0
    for i, m in enumerate(sizes):
        if groups[-1] and (rows + m) * n > limit:
            groups.append([])
            rows = 0
        groups[-1].append(i)
        rows += m
    return groups


def _certificates(single, names, sizes, xs, *, group_entries, block) -> dict:
    out = {}
    n = int(np.prod(xs.shape[1:]))
    for group in _groups(sizes, n, group_entries):
        chosen = [names[i] for i in group]

        def fn(x, chosen=chosen):
            acts = single(x)
            return {name: acts[name] for name in chosen}

        certs = certify_batch(fn, xs, block=block)
        for name in chosen:
            out[name] = summarize([c[name] for c in certs])
    return out


def _default_start(shape, bounds, key, dtype):
    """``clip(c + 0.1 N(0, I))``, ``c`` the centre of ``bounds`` (0 without bounds)."""
    key = jax.random.key(0) if key is None else key
    noise = np.asarray(jax.random.normal(key, shape, jnp.float32), np.float64)
    if bounds is None:
        return (0.1 * noise).astype(dtype)
    lo, hi = bounds
    return np.clip(0.5 * (lo + hi) + 0.1 * noise, lo, hi).astype(dtype)


def _invert(single, names, sizes, xs, *, steps, lr, optimizer, start, bounds, chunk, progress):
    """All (input, layer) pairs as one batched engine call; ``(feature error (N, L), x_hat
    (N, L, *shape))``."""
    n_img, n_lay, shape = xs.shape[0], len(names), xs.shape[1:]

    def stacked(x):
        acts = single(x)
        return jnp.concatenate([acts[name].ravel() for name in names])

    segment = np.repeat(np.arange(n_lay, dtype=np.int32), sizes)  # the layer of each entry
    phi0 = np.asarray(jax.jit(jax.vmap(stacked))(xs))  # (N, D)
    onehot = np.tile(np.eye(n_lay, dtype=phi0.dtype), (n_img, 1))
    targets = np.concatenate([np.repeat(phi0, n_lay, axis=0), onehot], axis=1)
    if start.shape == shape:
        starts = np.broadcast_to(start, (n_img * n_lay, *shape))
    else:
        starts = np.repeat(start, n_lay, axis=0)
    if optimizer is None:
        optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps))
    result = invert_batch(
        lambda x: jnp.concatenate([stacked(x), jnp.zeros((n_lay,), x.dtype)]),
        targets,
        x0=starts,
        steps=steps,
        solver=inversion.solvers.Optax(optimizer),
        problem=inversion.Problem(loss=layer_selector_loss(segment), bounds=bounds),
        execution=inversion.Execution(chunk=chunk, progress=progress),
    )
    x_hat = np.asarray(result.x).reshape(n_img, n_lay, *shape)
    return np.asarray(result.loss).reshape(n_img, n_lay), x_hat


def _classes(nullity, error, failed_error) -> tuple[str, ...]:
    inverted = error is not None
    holds = {
        "lossy": nullity["exact"] > 0,
        "lost_below_float32": nullity["exact"] == 0 and nullity["float32"] > 0,
        "optimiser_limited": inverted and nullity["float32"] == 0 and error > failed_error,
        "lost_at_8bit": nullity["8-bit"] > 0,
        "recovered": inverted and error <= failed_error,
    }
    return tuple(c for c in CLASSES if holds[c])


def layerwise(
    features: Callable[[Array], Mapping[str, Array]],
    x0: Float[Array, "N ..."],
    *,
    layers: Sequence[str] | None = None,
    invert: bool = True,
    steps: int = 500,
    lr: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
    start: Array | None = None,
    key: Array | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    data_range: float | None = None,
    failed_error: float = FAILED_ERROR,
    group_entries: int = 2**25,
    block: int = 256,
    chunk: int | None = None,
    progress: bool = False,
) -> LayerwiseReport:
    """Certify, invert and classify every layer of ``features`` at the inputs ``x0`` (see the
    module docstring for the maths).

    Args:
        features: pure ``features(x) -> {name: activation}`` of a batch ``x`` (``(b, *shape)``),
            every activation with the batch axis first and each row depending on its own input
            only; the dict's order is the forward order. E.g. ``models.activations_fn(model)``
            for a Flax or an imported (ONNX / torch) network.
        x0: the inputs, ``(N, *shape)``, floating point.
        layers: the names to analyse (reported in ``features``' order); default all. For a
            large network pick a subset, e.g. ``names[::k]`` or the last layer at each
            resolution (:func:`layer_shapes`); unchosen layers still run but are not certified
            or inverted.
        invert: ``False``: certificates only (no optimisation).
        steps, lr, optimizer: the reconstruction: ``optimizer`` (default Adam with a cosine
            decay from ``lr`` over ``steps``) for ``steps`` steps.
        start: the start of every reconstruction, shaped like one input (shared) or like
            ``x0`` (one per input); default ``clip(c + 0.1 N(0, I))`` drawn with ``key``
            (default ``jax.random.key(0)``), ``c`` the centre of ``bounds`` (0 without).
        bounds: the box the inputs live in (``x0`` must lie in it) and the reconstructions are
            projected onto; ``None`` for none. Default ``(0, 1)``, the project's images.
        data_range: PSNR's peak value; default the width of ``bounds`` (without bounds, the
            range of ``x0``, or 1 if ``x0`` is constant).
        failed_error: image relative error above which a reconstruction failed (the classes).
        group_entries: at most this many float64 Jacobian entries ``(sum m_l) x n`` are held
            at once: layers are certified in consecutive groups, one Jacobian per input and
            group (all layers in one group when they fit).
        block, chunk, progress: passed to :func:`~inversion.analysis.certify_batch` (Jacobian
            columns per compiled call) and :func:`inversion.invert_batch`.

    >>> import jax.numpy as jnp
    >>> def features(x):  # a batch (b, 4): a ReLU layer, then the sum of pairs
    ...     h = jnp.maximum(x - 0.5, 0.0)
    ...     return {"relu": h, "pairs": h[:, ::2] + h[:, 1::2]}
    >>> x0 = jnp.array([[0.9, 0.2, 0.8, 0.7]])
    >>> report = layerwise(features, x0, invert=False)
    >>> [(layer.name, layer.rank["exact"], layer.visible_fraction) for layer in report]
    [('relu', 3, 0.75), ('pairs', 2, 0.5)]
    >>> report["pairs"].verdict
    'lossy'
    """
    if not callable(features):
        raise TypeError(f"features must be callable, got {type(features).__name__}")
    xs = _check_inputs(x0, bounds)
    if invert and (not isinstance(steps, int | np.integer) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(group_entries, int | np.integer) or group_entries < 1:
        raise ValueError(f"group_entries must be a positive integer, got {group_entries!r}")
    if not (isinstance(failed_error, int | float) and failed_error >= 0):
        raise ValueError(f"failed_error must be a non-negative number, got {failed_error!r}")
    shape = xs.shape[1:]
    if invert:
        start = _default_start(shape, bounds, key, xs.dtype) if start is None else start
        start = np.asarray(start, xs.dtype)
        if start.shape not in (shape, xs.shape):
            raise ValueError(f"start must have shape {shape} or {xs.shape}, got {start.shape}")
    all_shapes = _trace(features, shape, xs.dtype)
    names = _select(list(all_shapes), layers)
    sizes = [int(np.prod(all_shapes[name].shape[1:])) for name in names]

    def single(x):  # one input (*shape) -> {name: activation of that input}
        acts = features(x[None])
        return {name: acts[name][0] for name in names}

    certs = _certificates(single, names, sizes, xs, group_entries=group_entries, block=block)
    errors = x_hat = None
    if invert:
        errors, x_hat = _invert(
            single,
            names,
            sizes,
            xs,
            steps=int(steps),
            lr=lr,
            optimizer=optimizer,
            start=start,
            bounds=bounds,
            chunk=chunk,
            progress=progress,
        )
        if data_range is None:
            ptp = float(np.ptp(xs))
            data_range = bounds[1] - bounds[0] if bounds is not None else (ptp or 1.0)
    reports = {}
    for i, name in enumerate(names):
        s = certs[name]
        nullity = {p: s[p]["max_nullity"] for p in PRECISIONS}
        inv = dict.fromkeys(("feat", "feat_i", "err", "err_i", "psnr", "psnr_i"))
        if invert:
            err_i = relative_error(x_hat[:, i], xs, reduce=False)
            psnr_i = psnr(x_hat[:, i], xs, data_range, reduce=False)
            inv = {
                "feat": float(np.mean(errors[:, i])),
                "feat_i": errors[:, i],
                "err": float(np.mean(err_i)),
                "err_i": np.asarray(err_i),
                "psnr": float(np.median(psnr_i)),  # median: exact recoveries give ~150 dB
                "psnr_i": np.asarray(psnr_i),
            }
        classes = _classes(nullity, inv["err"], failed_error)
        reports[name] = LayerReport(
            name=name,
            shape=tuple(all_shapes[name].shape[1:]),
            n_in=s["n_in"],
            n_out=s["n_out"],
            nullity=nullity,
            nullity_per_input={p: s[p]["nullity_per_input"] for p in PRECISIONS},
            condition_number=s["condition_number_range"][1],
            sigma_min=s["sigma_min_range"][0],
            feature_error=inv["feat"],
            feature_error_per_input=inv["feat_i"],
            relative_error=inv["err"],
            relative_error_per_input=inv["err_i"],
            psnr=inv["psnr"],
            psnr_per_input=inv["psnr_i"],
            classes=classes,
            verdict=classes[0] if classes else DETERMINED,
        )
    return LayerwiseReport(
        layers=reports,
        inputs=int(xs.shape[0]),
        n_in=int(np.prod(shape)),
        failed_error=float(failed_error),
        steps=int(steps) if invert else None,
        x_hat=x_hat,
    )
