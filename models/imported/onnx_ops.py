"""ONNX operators as JAX (and NumPy) functions, for :mod:`models.imported.onnx_import`.

Each operator is ``op(ctx, inputs, attrs) -> list of outputs``, following the ONNX operator
specification (https://onnx.ai/onnx/operators/) for the default domain. ``inputs`` holds
``None`` for an omitted optional input. ``ctx.xp`` is ``jax.numpy`` for values that depend on
the network's input and ``numpy`` for values the graph computes from shapes and constants
alone (a ``Reshape`` whose target shape comes from ``Shape -> Gather -> Concat``): those are
evaluated eagerly while tracing, so they stay concrete under ``jax.jit``. ``ctx.float_dtype``
is the dtype the network runs in (the input's), so a ``Cast`` to float does not drop a float64
run to float32. ``ctx.opset`` is the model's default-domain opset version.

``STATIC_INPUTS[op]`` lists the input positions that must be concrete (shapes, axes, scales):
the importer refuses a graph where one of them depends on the input's values, before anything
runs. ``unsupported_attribute(op, attrs)`` names a supported op's attribute value the import
cannot honour (also checked before anything runs).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Context(NamedTuple):
    xp: object  # numpy or jax.numpy
    float_dtype: object
    opset: int


# ---------------------------------------------------------------- helpers


def _ints(value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _is_float(x) -> bool:
    return np.issubdtype(np.asarray(x).dtype if isinstance(x, np.ndarray) else x.dtype, np.floating)


def _int_dtype(ctx):
    return np.int64 if ctx.xp is np else jax.dtypes.canonicalize_dtype(np.int64)


def _spatial_pads(attrs, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """``[(begin, end)]`` per spatial axis from ``pads``/``auto_pad`` (Conv, pools)."""
    nd = len(in_sizes)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return out
    if auto == "VALID":
        return [(0, 0)] * nd
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    return [(pads[i], pads[i + nd]) for i in range(nd)]


def _conv_geometry(x, attrs, kernel):
    nd = x.ndim - 2
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    pads = _spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    return nd, strides, dilations, pads


def _dimension_numbers(nd: int):
    spec = tuple(range(nd + 2))
    return lax.ConvDimensionNumbers(lhs_spec=spec, rhs_spec=spec, out_spec=spec)


def _channel_bias(y, bias):
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.ndim - 2))


# ---------------------------------------------------------------- convolution


def _depthwise_taps(x, w, strides, dilations, pads):
    """Depthwise 2-D cross-correlation (``group == c_in``, ``c_out = m c_in``) as a sum over the
    kernel's taps of strided slices times per-channel weights:
    ``y[b, o, i, j] = sum_{a, e} x_pad[b, o // m, s0 i + d0 a, s1 j + d1 e] w[o, 0, a, e]``.
    Its input-gradient is slices and pads, where XLA:CPU's grouped-convolution gradient is
    5-10x slower (4 x 192 x 16 x 16, 3x3: 26-38 ms against 5 ms on 2 cores)."""
    c_out, _, kh, kw = w.shape
    m = c_out // x.shape[1]
    if m > 1:
        x = jnp.repeat(x, m, axis=1)
    x = jnp.pad(x, [(0, 0), (0, 0), *pads])
    (s0, s1), (d0, d1) = strides, dilations
    h = (x.shape[2] - (d0 * (kh - 1) + 1)) // s0 + 1
    wd = (x.shape[3] - (d1 * (kw - 1) + 1)) // s1 + 1
    w = w.astype(x.dtype)
    y = 0
    for a in range(kh):
        for e in range(kw):
            window = x[
                :,
                :,
                d0 * a : d0 * a + s0 * (h - 1) + 1 : s0,
                d1 * e : d1 * e + s1 * (wd - 1) + 1 : s1,
            ]
            y = y + window * w[:, 0, a, e][None, :, None, None]
    return y


def conv(ctx, inputs, attrs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    nd, strides, dilations, pads = _conv_geometry(x, attrs, kernel)
    group = int(attrs.get("group", 1))
    if nd == 2 and group > 1 and group == x.shape[1] and jax.default_backend() == "cpu":
        return [_channel_bias(_depthwise_taps(x, w, strides, dilations, pads), bias)]
    y = lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilations,
        dimension_numbers=_dimension_numbers(nd),
        feature_group_count=int(attrs.get("group", 1)),
    )
    return [_channel_bias(y, bias)]


def conv_transpose(ctx, inputs, attrs):
    """``y = conv(dilate(x, s), flip(w)^T)``: the adjoint of a strided convolution, with
    ``pads`` removed from the full output and ``output_padding`` added at the end."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    nd = x.ndim - 2
    group = int(attrs.get("group", 1))
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    out_pad = list(attrs.get("output_padding", [0] * nd))
    full = [
        s * (i - 1) + op + (k - 1) * d + 1
        for i, s, op, k, d in zip(x.shape[2:], strides, out_pad, kernel, dilations, strict=True)
    ]
    if "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        target = (
            list(attrs["output_shape"])[-nd:]
            if "output_shape" in attrs
            else [i * s for i, s in zip(x.shape[2:], strides, strict=True)]
        )
        pads = []
        for f, t in zip(full, target, strict=True):
            total = f - t
            upper = attrs.get("auto_pad", "NOTSET") == "SAME_UPPER"
            pads.append(
                (total // 2, total - total // 2) if upper else (total - total // 2, total // 2)
            )
    elif attrs.get("auto_pad", "NOTSET") == "VALID":
        pads = [(0, 0)] * nd
    else:
        p = list(attrs.get("pads", [0] * (2 * nd)))
        pads = [(p[i], p[i + nd]) for i in range(nd)]
    c_in = w.shape[0]
    c_out_g = w.shape[1]
    if (
        nd == 2 and group == 1 and kernel == strides and dilations == [1, 1]
        and pads == [(0, 0), (0, 0)] and out_pad == [0, 0]
    ):  # fmt: skip
        # kernel == stride, no padding: the output's s x s blocks do not overlap, so it is one
        # matrix product and a depth-to-space reshape (no dilated convolution)
        b, _, h, wd = x.shape
        y = jnp.einsum("bchw,coae->bohawe", x, w.astype(x.dtype))
        y = y.reshape(b, c_out_g, h * kernel[0], wd * kernel[1])
        return [_channel_bias(y, bias)]
    # (c_in, c_out/g, k...) -> (g, c_out/g, c_in/g, k...) -> (c_out, c_in/g, k...), flipped.
    kern = w.reshape((group, c_in // group, c_out_g) + tuple(w.shape[2:]))
    kern = jnp.swapaxes(kern, 1, 2).reshape((group * c_out_g, c_in // group) + tuple(w.shape[2:]))
    kern = jnp.flip(kern, axis=tuple(range(2, 2 + nd))).astype(x.dtype)
    padding = [
        ((k - 1) * d - b, (k - 1) * d - e + op)
        for (b, e), k, d, op in zip(pads, kernel, dilations, out_pad, strict=True)
    ]
    y = lax.conv_general_dilated(
        x,
        kern,
        window_strides=[1] * nd,
        padding=padding,
        lhs_dilation=strides,
        rhs_dilation=dilations,
        dimension_numbers=_dimension_numbers(nd),
        feature_group_count=group,
    )
    return [_channel_bias(y, bias)]


# ---------------------------------------------------------------- pooling


def _pool_geometry(x, attrs):
    kernel = list(attrs["kernel_shape"])
    _, strides, dilations, pads = _conv_geometry(x, attrs, kernel)
    extra = []
    for size, k, s, d, (b, e) in zip(x.shape[2:], kernel, strides, dilations, pads, strict=True):
        span = size + b + e - ((k - 1) * d + 1)
        out = (-(-span // s) if attrs.get("ceil_mode", 0) else span // s) + 1
        if attrs.get("ceil_mode", 0) and (out - 1) * s >= size + b:
            out -= 1  # the last window must start inside the input or the left padding
        extra.append(max((out - 1) * s + (k - 1) * d + 1 - (size + b + e), 0))
    return kernel, strides, dilations, pads, extra


def max_pool(ctx, inputs, attrs):
    x = inputs[0]
    kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
    padding = [(0, 0), (0, 0)] + [(b, e + x_) for (b, e), x_ in zip(pads, extra, strict=True)]
    y = lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, 1, *kernel),
        (1, 1, *strides),
        padding,
        window_dilation=(1, 1, *dilations),
    )
    return [y]


def average_pool(ctx, inputs, attrs):
    x = inputs[0]
    kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
    padding = [(0, 0), (0, 0)] + [(b, e + x_) for (b, e), x_ in zip(pads, extra, strict=True)]
    window = dict(
        window_dimensions=(1, 1, *kernel),
        window_strides=(1, 1, *strides),
        padding=padding,
        window_dilation=(1, 1, *dilations),
    )
    total = lax.reduce_window(x, 0.0, lax.add, **window)
    if attrs.get("count_include_pad", 0):
        # explicit pads count, the extra cells of ceil_mode do not (as PyTorch and onnxruntime)
        padded = [s + b + e for s, (b, e) in zip(x.shape[2:], pads, strict=True)]
        ones = jnp.ones((1, 1, *padded), x.dtype)
        window = {**window, "padding": [(0, 0), (0, 0)] + [(0, e) for e in extra]}
    else:
        ones = jnp.ones((1, 1) + x.shape[2:], x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, **window)
    return [total / count]


def global_average_pool(ctx, inputs, attrs):
    x = inputs[0]
    return [jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


def global_max_pool(ctx, inputs, attrs):
    x = inputs[0]
    return [jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


# ---------------------------------------------------------------- normalisation


def batch_normalization(ctx, inputs, attrs):
    """Inference mode: ``y = (x - mean) / sqrt(var + eps) * scale + bias``."""
    x, scale, bias, mean, var = inputs[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = attrs.get("epsilon", 1e-5)
    inv = scale.reshape(shape) / jnp.sqrt(var.reshape(shape) + eps)
    return [(x - mean.reshape(shape)) * inv + bias.reshape(shape)]


def instance_normalization(ctx, inputs, attrs):
    x, scale, bias = inputs
    axes = tuple(range(2, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean) / jnp.sqrt(var + attrs.get("epsilon", 1e-5))
    return [y * scale.reshape(shape) + bias.reshape(shape)]


def layer_normalization(ctx, inputs, attrs):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axes = tuple(range(_axis(attrs.get("axis", -1), x.ndim), x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + attrs.get("epsilon", 1e-5)) * scale
    return [y if bias is None else y + bias]


# ---------------------------------------------------------------- element-wise


def _unary(f):
    return lambda ctx, inputs, attrs: [f(ctx.xp, inputs[0], attrs)]


def _binary(f):
    return lambda ctx, inputs, attrs: [f(ctx.xp, inputs[0], inputs[1])]


def _variadic(f):
    def op(ctx, inputs, attrs):
        out = inputs[0]
        for x in inputs[1:]:
            out = f(ctx.xp, out, x)
        return [out]

    return op


def _div(xp, a, b):
    if not _is_float(a) and not _is_float(b):
        return (xp.sign(a) * xp.sign(b) * (xp.abs(a) // xp.abs(b))).astype(np.result_type(a, b))
    return a / b


def _mod(xp, a, b, attrs):
    """``fmod=1``: the sign of the dividend (C's fmod); ``fmod=0``: of the divisor (Python)."""
    return xp.fmod(a, b) if attrs.get("fmod", 0) else xp.mod(a, b)


def clip(ctx, inputs, attrs):
    x = inputs[0]
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
    if lo is not None:
        x = ctx.xp.maximum(x, lo)
    if hi is not None:
        x = ctx.xp.minimum(x, hi)
    return [x]


def _hard_sigmoid(xp, x, attrs):
    return xp.clip(attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5), 0.0, 1.0)


def _gelu(xp, x, attrs):
    return jax.nn.gelu(x, approximate=attrs.get("approximate", "none") == "tanh")


def softmax(ctx, inputs, attrs, log=False):
    x = inputs[0]
    f = jax.nn.log_softmax if log else jax.nn.softmax
    if ctx.opset < 13:  # coerced to 2-D at axis (default 1)
        axis = _axis(attrs.get("axis", 1), x.ndim)
        flat = x.reshape((int(np.prod(x.shape[:axis])), -1))
        return [f(flat, axis=-1).reshape(x.shape)]
    return [f(x, axis=attrs.get("axis", -1))]


def cast(ctx, inputs, attrs):
    from onnx import helper

    x = inputs[0]
    target = np.dtype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if np.issubdtype(target, np.floating):
        target = ctx.float_dtype  # a float run stays in its own precision, shape arithmetic too
    elif np.issubdtype(target, np.integer) and ctx.xp is not np:
        target = jax.dtypes.canonicalize_dtype(target)
    return [x.astype(target)]


# ---------------------------------------------------------------- linear algebra


def gemm(ctx, inputs, attrs):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * ctx.xp.matmul(a, b.astype(a.dtype))
    return [y if c is None else y + attrs.get("beta", 1.0) * c]


def matmul(ctx, inputs, attrs):
    return [ctx.xp.matmul(inputs[0], inputs[1])]


# ---------------------------------------------------------------- shapes and indexing


def shape(ctx, inputs, attrs):
    s = np.asarray(np.shape(inputs[0]), np.int64)
    start = attrs.get("start", 0)
    end = attrs.get("end", None)
    return [s[start:end]]


def size(ctx, inputs, attrs):
    return [np.asarray(np.size(inputs[0]), np.int64)]


def reshape(ctx, inputs, attrs):
    x, target = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if t == 0 else t for i, t in enumerate(target)]
    return [ctx.xp.reshape(x, target)]


def flatten(ctx, inputs, attrs):
    x = inputs[0]
    axis = _axis(attrs.get("axis", 1), x.ndim)
    return [ctx.xp.reshape(x, (int(np.prod(x.shape[:axis])), -1))]


def transpose(ctx, inputs, attrs):
    x = inputs[0]
    perm = attrs.get("perm", list(range(x.ndim))[::-1])
    return [ctx.xp.transpose(x, perm)]


def _axes(ctx, inputs, attrs, since: int):
    if ctx.opset >= since:
        return _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    return list(attrs["axes"]) if "axes" in attrs else None


def squeeze(ctx, inputs, attrs):
    x = inputs[0]
    axes = _axes(ctx, inputs, attrs, 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [ctx.xp.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in axes))]


def unsqueeze(ctx, inputs, attrs):
    x = inputs[0]
    axes = _axes(ctx, inputs, attrs, 13)
    rank = x.ndim + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = ctx.xp.expand_dims(x, a)
    return [x]


def concat(ctx, inputs, attrs):
    xs = [x for x in inputs if x is not None]
    xp = ctx.xp
    if xp is not np:
        dtype = jnp.result_type(*xs)
        xs = [jnp.asarray(x, dtype) for x in xs]
    return [xp.concatenate(xs, axis=attrs["axis"])]


def split(ctx, inputs, attrs):
    x = inputs[0]
    axis = _axis(attrs.get("axis", 0), x.ndim)
    if ctx.opset >= 13 and len(inputs) > 1 and inputs[1] is not None:
        parts = _ints(inputs[1])
    elif "split" in attrs:
        parts = list(attrs["split"])
    else:
        n = attrs.get("num_outputs", attrs.get("_outputs"))
        chunk = -(-x.shape[axis] // n)
        parts = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    edges = np.cumsum(parts)[:-1]
    return list(ctx.xp.split(x, edges, axis=axis))


def slice_(ctx, inputs, attrs):
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis = _axis(axis, x.ndim)
        size = x.shape[axis]
        big = np.iinfo(np.int64).max // 2
        end = None if (step > 0 and end >= big) or (step < 0 and end <= -big) else end
        if end is not None and end < -size and step < 0:
            end = None
        index[axis] = slice(start, end, step)
    return [x[tuple(index)]]


def gather(ctx, inputs, attrs):
    x, idx = inputs
    axis = _axis(attrs.get("axis", 0), x.ndim)
    if isinstance(idx, np.ndarray | np.generic):  # indices known while tracing (the usual case)
        idx = np.where(idx < 0, idx + x.shape[axis], idx).astype(
            np.int64 if ctx.xp is np else np.int32
        )
    else:
        idx = jnp.where(idx < 0, idx + x.shape[axis], idx)
    return [ctx.xp.take(x, idx, axis=axis)]


def constant(ctx, inputs, attrs):
    from onnx import numpy_helper

    if "value" in attrs:
        return [numpy_helper.to_array(attrs["value"])]
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return [np.asarray(attrs[key], dtype)]
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return [np.asarray(list(attrs[key]), dtype)]
    raise ValueError(f"Constant with attributes {sorted(attrs)} is not supported")


def constant_of_shape(ctx, inputs, attrs):
    from onnx import numpy_helper

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    out = np.full(_ints(inputs[0]), value.reshape(-1)[0], value.dtype)
    return [out]


def expand(ctx, inputs, attrs):
    x, target = inputs[0], _ints(inputs[1])
    out_shape = np.broadcast_shapes(tuple(x.shape), tuple(target))
    return [ctx.xp.broadcast_to(x, out_shape)]


def tile(ctx, inputs, attrs):
    return [ctx.xp.tile(inputs[0], _ints(inputs[1]))]


def pad(ctx, inputs, attrs):
    x = inputs[0]
    if ctx.opset < 11:
        pads, value = list(attrs["pads"]), attrs.get("value", 0.0)
        axes = list(range(x.ndim))
    else:
        pads = _ints(inputs[1])
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0.0
        axes = (
            _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(x.ndim))
        )
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[_axis(a, x.ndim)] = (pads[i], pads[i + len(axes)])
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        return [
            ctx.xp.pad(
                x,
                width,
                constant_values=np.asarray(value).reshape(-1)[0] if np.size(value) else 0.0,
            )
        ]
    return [ctx.xp.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


def range_(ctx, inputs, attrs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


def where(ctx, inputs, attrs):
    return [ctx.xp.where(*inputs)]


def _reduce(name):
    def op(ctx, inputs, attrs):
        x = inputs[0]
        since = 13 if name == "sum" else 18
        axes = _axes(ctx, inputs, attrs, since)
        if axes is None and attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = tuple(range(x.ndim)) if axes is None else tuple(_axis(a, x.ndim) for a in axes)
        keep = bool(attrs.get("keepdims", 1))
        xp = ctx.xp
        if name == "l2":
            return [xp.sqrt(xp.sum(x * x, axis=axes, keepdims=keep))]
        return [getattr(xp, name)(x, axis=axes, keepdims=keep)]

    return op


def identity(ctx, inputs, attrs):
    return [inputs[0]]


def dropout(ctx, inputs, attrs):
    """Inference: the identity (the mask output, if asked for, is all True)."""
    x = inputs[0]
    return [x, ctx.xp.ones(x.shape, bool)]


# ---------------------------------------------------------------- resizing


def _source_coords(out_size, in_size, scale, mode):
    """Input coordinate of each output index (ONNX ``coordinate_transformation_mode``)."""
    i = np.arange(out_size, dtype=np.float64)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(i)
    if mode == "align_corners":
        return i * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(i)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel_symmetric":
        adj = out_size / (scale * in_size)
        offset = in_size / 2 * (1 - adj)
        return offset + (i + 0.5) / scale - 0.5
    raise ValueError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest(coords, rule, in_size):
    if rule == "floor":
        idx = np.floor(coords)
    elif rule == "ceil":
        idx = np.ceil(coords)
    elif rule == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    else:  # round_prefer_floor
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, in_size - 1).astype(np.int32)


def resize(ctx, inputs, attrs):
    x = inputs[0]
    if ctx.opset < 11:
        scales = np.asarray(inputs[1], np.float64)
        sizes = None
    else:
        scales = (
            inputs[2] if len(inputs) > 2 and inputs[2] is not None and np.size(inputs[2]) else None
        )
        sizes = (
            inputs[3] if len(inputs) > 3 and inputs[3] is not None and np.size(inputs[3]) else None
        )
        scales = None if scales is None else np.asarray(scales, np.float64)
    if sizes is not None:
        sizes = _ints(sizes)
        scales = np.asarray(sizes, np.float64) / np.asarray(x.shape, np.float64)
    else:
        sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales, strict=True)]
    mode = attrs.get("mode", "nearest")
    default_coord = "half_pixel" if ctx.opset >= 11 else "asymmetric"
    coord = attrs.get("coordinate_transformation_mode", default_coord)
    rule = attrs.get("nearest_mode", "round_prefer_floor")
    for axis in range(x.ndim):
        if sizes[axis] == x.shape[axis] and scales[axis] == 1.0:
            continue
        src = _source_coords(sizes[axis], x.shape[axis], scales[axis], coord)
        if mode == "nearest":
            index = _nearest(src, rule, x.shape[axis])
            k = sizes[axis] // x.shape[axis]
            if k >= 1 and np.array_equal(index, np.repeat(np.arange(x.shape[axis]), k)):
                x = ctx.xp.repeat(x, k, axis=axis)  # integer upsampling: a cheap gradient
            else:
                x = ctx.xp.take(x, index, axis=axis)
            continue
        src = np.clip(src, 0, x.shape[axis] - 1)
        lo = np.floor(src).astype(np.int32)
        hi = np.minimum(lo + 1, x.shape[axis] - 1)
        w = (src - lo).reshape((-1,) + (1,) * (x.ndim - axis - 1)).astype(x.dtype)
        x = ctx.xp.take(x, lo, axis=axis) * (1 - w) + ctx.xp.take(x, hi, axis=axis) * w
    return [x]


def upsample(ctx, inputs, attrs):
    scales = attrs["scales"] if "scales" in attrs else inputs[1]
    attrs = {**attrs, "coordinate_transformation_mode": "asymmetric"}
    if attrs.get("mode", "nearest") == "nearest":
        attrs["nearest_mode"] = "floor"
    return resize(ctx._replace(opset=10), [inputs[0], np.asarray(scales)], attrs)


# ---------------------------------------------------------------- the table

OPS = {
    "Abs": _unary(lambda xp, x, a: xp.abs(x)),
    "Add": _binary(lambda xp, a, b: a + b),
    "And": _binary(lambda xp, a, b: xp.logical_and(a, b)),
    "AveragePool": average_pool,
    "BatchNormalization": batch_normalization,
    "Cast": cast,
    "Ceil": _unary(lambda xp, x, a: xp.ceil(x)),
    "Clip": clip,
    "Concat": concat,
    "Constant": constant,
    "ConstantOfShape": constant_of_shape,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Div": _binary(_div),
    "Dropout": dropout,
    "Elu": _unary(lambda xp, x, a: jax.nn.elu(x, a.get("alpha", 1.0))),
    "Equal": _binary(lambda xp, a, b: a == b),
    "Erf": _unary(lambda xp, x, a: jax.scipy.special.erf(x)),
    "Exp": _unary(lambda xp, x, a: xp.exp(x)),
    "Expand": expand,
    "Flatten": flatten,
    "Floor": _unary(lambda xp, x, a: xp.floor(x)),
    "Gather": gather,
    "Gelu": _unary(_gelu),
    "Gemm": gemm,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "Greater": _binary(lambda xp, a, b: a > b),
    "HardSigmoid": _unary(_hard_sigmoid),
    "HardSwish": _unary(lambda xp, x, a: x * _hard_sigmoid(xp, x, {"alpha": 1 / 6})),
    "Identity": identity,
    "InstanceNormalization": instance_normalization,
    "LayerNormalization": layer_normalization,
    "LeakyRelu": _unary(lambda xp, x, a: xp.where(x >= 0, x, a.get("alpha", 0.01) * x)),
    "Less": _binary(lambda xp, a, b: a < b),
    "Log": _unary(lambda xp, x, a: xp.log(x)),
    "LogSoftmax": lambda ctx, i, a: softmax(ctx, i, a, log=True),
    "MatMul": matmul,
    "Max": _variadic(lambda xp, a, b: xp.maximum(a, b)),
    "MaxPool": max_pool,
    "Mean": lambda ctx, i, a: [sum(i[1:], i[0]) / len(i)],
    "Min": _variadic(lambda xp, a, b: xp.minimum(a, b)),
    "Mod": lambda ctx, i, a: [_mod(ctx.xp, i[0], i[1], a)],
    "Mul": _binary(lambda xp, a, b: a * b),
    "Neg": _unary(lambda xp, x, a: -x),
    "Not": _unary(lambda xp, x, a: xp.logical_not(x)),
    "Or": _binary(lambda xp, a, b: xp.logical_or(a, b)),
    "Pad": pad,
    "Pow": _binary(lambda xp, a, b: a**b),
    "PRelu": _binary(lambda xp, x, s: xp.where(x >= 0, x, s * x)),
    "Range": range_,
    "Reciprocal": _unary(lambda xp, x, a: 1 / x),
    "ReduceL2": _reduce("l2"),
    "ReduceMax": _reduce("max"),
    "ReduceMean": _reduce("mean"),
    "ReduceMin": _reduce("min"),
    "ReduceProd": _reduce("prod"),
    "ReduceSum": _reduce("sum"),
    "Relu": _unary(lambda xp, x, a: xp.maximum(x, 0)),
    "Reshape": reshape,
    "Resize": resize,
    "Selu": _unary(
        lambda xp, x, a: (
            a.get("gamma", 1.0507) * xp.where(x > 0, x, a.get("alpha", 1.67326) * (xp.exp(x) - 1))
        )
    ),
    "Shape": shape,
    "Sigmoid": _unary(lambda xp, x, a: jax.nn.sigmoid(x)),
    "Sign": _unary(lambda xp, x, a: xp.sign(x)),
    "Sin": _unary(lambda xp, x, a: xp.sin(x)),
    "Cos": _unary(lambda xp, x, a: xp.cos(x)),
    "Size": size,
    "Slice": slice_,
    "Softmax": softmax,
    "Softplus": _unary(lambda xp, x, a: jax.nn.softplus(x)),
    "Split": split,
    "Sqrt": _unary(lambda xp, x, a: xp.sqrt(x)),
    "Squeeze": squeeze,
    "Sub": _binary(lambda xp, a, b: a - b),
    "Sum": _variadic(lambda xp, a, b: a + b),
    "Tanh": _unary(lambda xp, x, a: xp.tanh(x)),
    "Tile": tile,
    "Transpose": transpose,
    "Unsqueeze": unsqueeze,
    "Upsample": upsample,
    "Where": where,
}

#: Inputs that must be concrete (shapes, axes, scales, pads): never computed from x's values.
STATIC_INPUTS = {
    "Reshape": {1},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Slice": {1, 2, 3, 4},
    "Expand": {1},
    "Tile": {1},
    "Pad": {1, 3},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "Split": {1},
    "ReduceMean": {1},
    "ReduceSum": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL2": {1},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
}

#: Ops whose outputs are concrete whatever their inputs (they read shapes only).
SHAPE_OPS = {"Shape", "Size"}


def unsupported_attribute(op: str, attrs: dict) -> str | None:
    """Why this node's attributes cannot be honoured, or ``None``."""
    if op == "BatchNormalization" and attrs.get("training_mode", 0):
        return "training_mode=1 (batch statistics); export the network in inference mode"
    if op in ("Resize", "Upsample") and attrs.get("mode", "nearest") not in ("nearest", "linear"):
        return f"mode={attrs['mode']!r} (nearest and linear are supported)"
    if op == "Resize" and attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return "coordinate_transformation_mode='tf_crop_and_resize'"
    if op == "Resize" and attrs.get("antialias", 0):
        return "antialias=1"
    if op == "Resize" and attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']!r}"
    if op in ("MaxPool",) and attrs.get("storage_order", 0):
        return "storage_order=1 (only the pooled values, not the indices, are supported)"
    if op == "Pad" and attrs.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"mode={attrs['mode']!r}"
    return None
