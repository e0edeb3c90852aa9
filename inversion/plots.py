"""Figures of what a network holds: per-layer curves, kernels, weight histograms, feature maps.

Pure matplotlib: every function takes arrays (or mappings of names to arrays or numbers),
never a model, and returns a :class:`matplotlib.figure.Figure` built without ``pyplot``, so no
global figure state is left open (save it with ``fig.savefig``; nothing to close).

>>> import numpy as np
>>> fig = layer_curve({"skips": {"enc1": 0.1, "out": 0.3}}, ylabel="relative error")
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
['enc1', 'out']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "activation_maps",
    "kernel_grid",
    "layer_curve",
    "top_channels",
    "weight_histograms",
]

#: Diverging colormap used for signed values (weights, pre-/post-activation maps), centred at 0.
DIVERGING = "RdBu_r"


def _check_mapping(value, what: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping of names to values, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} is empty")


def _as_array(value, name: str, *, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            raise ValueError(
                f"{name}: expected {' or '.join(map(str, allowed))} dims, got {arr.shape}"
            )
    if arr.size == 0:
        raise ValueError(f"{name}: empty array")
    return arr


def _symmetric_limit(arrays) -> float:
    """max |value| over finite entries (1.0 when all are zero), for a scale centred at 0."""
    lim = 0.0
    for a in arrays:
        finite = a[np.isfinite(a)]
        if finite.size:
            lim = max(lim, float(np.max(np.abs(finite))))
    return lim if lim > 0 else 1.0


def _norm(lim: float) -> TwoSlopeNorm:
    return TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)


def layer_curve(
    values: Mapping[str, Mapping[str, float]] | Mapping[str, float],
    *,
    ylabel: str,
    title: str | None = None,
    log: bool = False,
    xlabel: str = "layer",
    layers: Sequence[str] | None = None,
    markers: bool = True,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One line per series of per-layer numbers, layer names on the x-axis in forward order.

    ``values``: ``{series: {layer: value}}`` (e.g. ``{'skips': {...}, 'no skips': {...}}``) or a
    single series ``{layer: value}``. The x-axis order is ``layers`` if given, else the order in
    which layer names first appear across the series; a series may lack some layers (its line
    skips them). ``log=True`` gives a logarithmic y-axis (non-positive values are not drawn).
    """
    _check_mapping(values, "values")
    if all(not isinstance(v, Mapping) for v in values.values()):
        values = {"": values}
    elif not all(isinstance(v, Mapping) for v in values.values()):
        raise TypeError("values must be {layer: number} or {series: {layer: number}}, not mixed")
    if not isinstance(ylabel, str) or not ylabel:
        raise ValueError("ylabel must be a non-empty string")
    order: list[str] = []
    for series in values.values():
        for layer in series:
            if layer not in order:
                order.append(layer)
    if layers is not None:
        layers = list(layers)
        unknown = [name for name in order if name not in layers]
        if unknown:
            raise ValueError(f"layers {unknown} are in values but not in the given order {layers}")
        order = layers
    if not order:
        raise ValueError("values holds no layers")
    position = {name: i for i, name in enumerate(order)}
    fig = Figure(figsize=figsize or (max(4.0, 0.55 * len(order) + 2.0), 3.4), layout="constrained")
    ax = fig.add_subplot()
    for label, series in values.items():
        xs, ys = [], []
        for layer in order:
            if layer in series:
                try:
                    y = float(series[layer])
                except (TypeError, ValueError):
                    raise TypeError(
                        f"value of series {label!r} at layer {layer!r} is not a number: "
                        f"{series[layer]!r}"
                    ) from None
                xs.append(position[layer])
                ys.append(y if not (log and y <= 0) else np.nan)
        ax.plot(xs, ys, marker="o" if markers else None, label=label or None)
    ax.set_xticks(
        range(len(order)),
        order,
        rotation=45 if len(order) > 6 else 0,
        ha="right" if len(order) > 6 else "center",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if any(label for label in values):
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def kernel_grid(
    kernel_hwio,
    *,
    channels: Sequence[int] | int | None = None,
    input_channel: int | None = None,
    title: str = "kernels",
    shared_scale: bool = True,
    columns: int | None = None,
    vmax: float | None = None,
    label: str = "weight",
) -> Figure:
    """The spatial filters of a conv kernel (``(kh, kw, in, out)``, HWIO) as small images.

    One panel per output channel (``channels``: which ones, or how many from the first; all by
    default). With more than one input channel each panel shows ``input_channel`` (default 0)
    unless ``input_channel`` is None and the kernel has one input channel. Diverging colormap
    centred at 0; ``shared_scale=True``: one symmetric scale and one colorbar for all panels,
    ``False``: each panel its own symmetric scale and colorbar. The title states which.
    ``vmax``: the shared scale's limit (e.g. the same for two figures to compare), by default
    the largest ``|weight|`` shown. ``label``: the colorbar's label.
    """
    k = _as_array(kernel_hwio, "kernel_hwio", ndim=4)
    kh, kw, cin, cout = k.shape
    if input_channel is None:
        input_channel = 0
    if not isinstance(input_channel, int | np.integer) or not 0 <= input_channel < cin:
        raise ValueError(f"input_channel must be in [0, {cin}), got {input_channel!r}")
    if channels is None:
        chosen = list(range(cout))
    elif isinstance(channels, int | np.integer):
        if not 1 <= channels <= cout:
            raise ValueError(f"channels={channels} must be in [1, {cout}]")
        chosen = list(range(int(channels)))
    else:
        chosen = [int(c) for c in channels]
        bad = [c for c in chosen if not 0 <= c < cout]
        if bad or not chosen:
            raise ValueError(f"channels {chosen} must be non-empty, each in [0, {cout})")
    panels = [k[:, :, input_channel, c] for c in chosen]
    ncol = columns or min(len(panels), 8)
    nrow = math.ceil(len(panels) / ncol)
    fig = Figure(figsize=(1.3 * ncol + 1.2, 1.35 * nrow + 0.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    lim = _symmetric_limit(panels)
    if vmax is not None:
        if not shared_scale or not np.isfinite(vmax) or vmax <= 0:
            raise ValueError(f"vmax must be a positive number with shared_scale=True, got {vmax!r}")
        lim = float(vmax)
    image = None
    for ax, c, panel in zip(axes, chosen, panels, strict=False):
        norm = _norm(lim if shared_scale else _symmetric_limit([panel]))
        image = ax.imshow(panel, cmap=DIVERGING, norm=norm, interpolation="nearest")
        ax.set_title(f"ch {c}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if not shared_scale:
            fig.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if shared_scale:
        fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label=label)
    scale = f"shared scale ±{lim:.3g}" if shared_scale else "per-panel scale"
    where = f", input channel {input_channel}" if cin > 1 else ""
    fig.suptitle(f"{title} ({kh}x{kw}{where}; {scale})", fontsize=10)
    return fig


def weight_histograms(
    named_arrays: Mapping[str, object] | Mapping[str, Mapping[str, object]],
    *,
    bins: int = 40,
    columns: int | None = None,
    title: str | None = None,
    xlabel: str = "weight",
    log: bool = False,
) -> Figure:
    """One histogram panel per layer (the layer name as panel title), axes labelled.

    ``named_arrays``: ``{layer: array}``, or ``{series: {layer: array}}`` to overlay series
    (e.g. ``'trained'`` and ``'init'``) in each panel with a legend; a layer's panel uses one
    set of bin edges for all its series. ``log=True``: logarithmic counts.
    """
    _check_mapping(named_arrays, "named_arrays")
    if not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if all(isinstance(v, Mapping) for v in named_arrays.values()):
        series = {str(s): dict(v) for s, v in named_arrays.items()}
    elif any(isinstance(v, Mapping) for v in named_arrays.values()):
        raise TypeError(
            "named_arrays must be {layer: array} or {series: {layer: array}}, not mixed"
        )
    else:
        series = {"": dict(named_arrays)}
    order: list[str] = []
    for arrays in series.values():
        for layer in arrays:
            if layer not in order:
                order.append(layer)
    if not order:
        raise ValueError("named_arrays holds no layers")
    ncol = columns or min(len(order), 4)
    nrow = math.ceil(len(order) / ncol)
    fig = Figure(figsize=(3.0 * ncol, 2.3 * nrow + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, layer in zip(axes, order, strict=False):
        data = {
            s: _as_array(arrays[layer], f"{s + ' ' if s else ''}{layer}").ravel()
            for s, arrays in series.items()
            if layer in arrays
        }
        everything = np.concatenate([d[np.isfinite(d)] for d in data.values()])
        if everything.size == 0:
            raise ValueError(f"layer {layer!r} has no finite values")
        lo, hi = float(everything.min()), float(everything.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
        for s, d in data.items():
            ax.hist(
                d[np.isfinite(d)],
                bins=edges,
                alpha=0.6 if len(data) > 1 else 0.9,
                label=s or None,
                log=log,
            )
        ax.set_title(f"{layer} ({everything.size // len(data)} values)", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.tick_params(labelsize=7)
        if any(s for s in data):
            ax.legend(fontsize=7)
    for ax in axes[len(order) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def top_channels(activation, k: int) -> np.ndarray:
    """Indices of the ``k`` channels (last axis) with the largest variance, largest first.

    ``activation``: ``(h, w, c)`` or ``(n, h, w, c)`` (variance over all but the last axis).
    Ties keep the lower index first.
    """
    a = _as_array(activation, "activation", ndim=(3, 4))
    c = a.shape[-1]
    if not isinstance(k, int | np.integer) or not 1 <= k:
        raise ValueError(f"k must be a positive int, got {k!r}")
    var = a.reshape(-1, c).var(axis=0)
    var = np.where(np.isfinite(var), var, -np.inf)
    return np.argsort(-var, kind="stable")[: min(int(k), c)]


def activation_maps(
    named_activations: Mapping[str, object],
    *,
    channels: int = 8,
    images: int | Sequence[int] = 0,
    shared_scale: bool = False,
    title: str | None = None,
    panel_size: float = 1.1,
    image_labels: Sequence[str] | None = None,
) -> Figure:
    """Feature maps of several layers: one row per layer (its name on the left), the top
    ``channels`` channels by variance (over the shown images) in each row.

    ``named_activations``: ``{layer: (n, h, w, c) or (h, w, c)}``. ``images``: which images of
    the batch to show (an index or a list; each image adds a block of rows). Signed values use
    a diverging colormap centred at 0. ``shared_scale=True``: one symmetric scale over all
    rows and one colorbar; ``False``: each row its own symmetric scale and colorbar. The title
    states which, with the channel indices in each panel title. ``image_labels``: names of
    the batch's images for the row labels (default ``image <index>``).
    """
    _check_mapping(named_activations, "named_activations")
    if not isinstance(channels, int | np.integer) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    arrays = {}
    for name, value in named_activations.items():
        a = _as_array(value, str(name), ndim=(3, 4))
        arrays[str(name)] = a[None] if a.ndim == 3 else a
    n = min(a.shape[0] for a in arrays.values())
    picks = [images] if isinstance(images, int | np.integer) else list(images)
    if not picks or any(not isinstance(i, int | np.integer) or not 0 <= i < n for i in picks):
        raise ValueError(f"images must be indices in [0, {n}), got {images!r}")
    if image_labels is not None and len(image_labels) < n:
        raise ValueError(f"image_labels has {len(image_labels)} names for {n} images")
    rows = []  # (label, maps (h, w, k), channel indices)
    for i in picks:
        for name, a in arrays.items():
            idx = top_channels(a[picks], channels)
            image_name = f"image {i}" if image_labels is None else str(image_labels[i])
            label = name if len(picks) == 1 else f"{name}\n{image_name}"
            rows.append((label, a[i][..., idx], idx))
    ncol = max(r[1].shape[-1] for r in rows)
    lim_all = _symmetric_limit([r[1] for r in rows])
    # One axes per row showing the row's channels side by side (gaps are NaN, drawn white),
    # in a fixed layout in inches: ~100 separate axes take seconds to draw.
    left, top, bottom, cell_w, cell_h = 1.25, 0.45, 0.1, panel_size + 0.08, panel_size + 0.22
    width, height = left + ncol * cell_w + 0.75, top + len(rows) * cell_h + bottom
    fig = Figure(figsize=(width, height))

    def rect(x, y, w, h):  # inches from the top-left corner -> figure fraction
        return [x / width, 1.0 - (y + h) / height, w / width, h / height]

    cmap = matplotlib.colormaps[DIVERGING].with_extremes(bad="white")
    image = None
    for r, (label, maps, idx) in enumerate(rows):
        lim = lim_all if shared_scale else _symmetric_limit([maps])
        up = max(1, math.ceil(32 / maps.shape[1]))  # small maps: repeat pixels, exact gaps
        maps = np.repeat(np.repeat(maps, up, axis=0), up, axis=1)
        h, w, k = maps.shape
        gap = max(1, round(w * 0.08 / panel_size))
        mosaic = np.full((h, k * (w + gap) - gap), np.nan)
        for j in range(k):
            mosaic[:, j * (w + gap) : j * (w + gap) + w] = maps[..., j]
        y = top + r * cell_h + 0.18
        ax = fig.add_axes(rect(left, y, k * cell_w - 0.08, panel_size), label=f"row {label}")
        image = ax.imshow(
            mosaic, cmap=cmap, norm=_norm(lim), interpolation="nearest", aspect="auto"
        )
        for j in range(k):
            ax.add_patch(
                Rectangle(
                    (j * (w + gap) - 0.5, -0.5), w, h, fill=False, lw=0.6, ec="k", clip_on=False
                )
            )
        ax.set_axis_off()
        for j, c in enumerate(idx):
            ax.text(
                j * (w + gap) + (w - 1) / 2,
                -0.6,
                f"ch {int(c)}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.text(-0.08 * w, (h - 1) / 2, label, ha="right", va="center", fontsize=8)
        if not shared_scale:
            cax = fig.add_axes(
                rect(left + ncol * cell_w + 0.05, y, 0.1, panel_size), label="<colorbar>"
            )
            fig.colorbar(image, cax=cax).ax.tick_params(labelsize=6)
    if shared_scale:
        span = len(rows) * cell_h - 0.22
        cax = fig.add_axes(
            rect(left + ncol * cell_w + 0.05, top + 0.18, 0.12, span), label="<colorbar>"
        )
        fig.colorbar(image, cax=cax, label="activation")
    scale = f"shared scale ±{lim_all:.3g}" if shared_scale else "per-row scale"
    head = title or "activation maps"
    fig.suptitle(
        f"{head}: top {channels} channels by variance ({scale}, 0 = white)",
        fontsize=10,
        y=1.0 - 0.12 / height,
        va="top",
    )
    return fig
