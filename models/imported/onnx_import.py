"""An ONNX file as a pure JAX model: :func:`from_onnx`.

The graph is interpreted directly, node by node in its (topological) order, with the operators
of :mod:`models.imported.onnx_ops`; no conversion to another framework happens. Direct
interpretation was chosen over ONNX -> PyTorch -> JAX (onnx2torch, then torchax) because that
route failed on a real pretrained file in four places this import handles in its own code:
weights stored as ``Constant`` nodes, float64 (the torchax function refused it), computed
``Reshape`` targets under ``jax.jit``, and a dependency chain that replaced the installed torch.

What happens to each value:

* **Weights.** Floating initializers and floating ``Constant`` outputs that feed the network's
  computation become ``params`` (float32 as stored); the model casts them to the input's dtype,
  so a float64 input runs in float64 end to end.
* **Shape arithmetic.** ``Shape``/``Size`` outputs, integer constants, and every node whose
  inputs are all of these are *static*: evaluated with NumPy while tracing, so a ``Reshape``
  whose target the graph computes from ``Shape -> Gather -> Concat`` stays concrete under
  ``jax.jit``. An input that must be static (a shape, axes, scales; ``onnx_ops.STATIC_INPUTS``)
  but depends on the input's values is refused at import, naming the node.
* **Names.** ``layer_names`` are the outputs of the non-static nodes in graph order, then
  ``'out'``: the graph's first output, listed under that name only. ``feature_fn(model, name)`` cuts the graph at any of
  them, e.g. at the logits that feed a final ``Sigmoid``.

Refused before anything runs (``ValueError`` naming op and node): an op outside
``onnx_ops.OPS`` or outside the default domain, an attribute value the import cannot honour
(``BatchNormalization(training_mode=1)``, cubic ``Resize``, ...), a graph with several
non-constant inputs, and control flow (``If``, ``Loop``, ``Scan``).

The reference runtime for :func:`models.conformance` is onnxruntime in float32, and ONNX's own
reference evaluator (``onnx.reference``) on a float64 copy of the graph in float64, since
onnxruntime has no float64 convolution kernels; four of its kernels that are not
float64-exact are replaced by the operators' definitions (``_float64_kernels``).
"""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import numpy as np

from models.imported import onnx_ops
from models.imported.model import OUTPUT, ImportedModel, check_layout

_FLOAT = {"tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"}


def _load(path_or_model):
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - the onnx extra is installed by make test
        raise ImportError(
            "models.from_onnx needs the 'onnx' extra: pip install 'inversion-lab[onnx]'"
        ) from err
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if not isinstance(path_or_model, str | os.PathLike):
        raise TypeError(
            f"path_or_model must be a path or an onnx.ModelProto, got {type(path_or_model).__name__}"
        )
    path = pathlib.Path(path_or_model)
    if not path.is_file():
        raise ValueError(f"path_or_model {str(path)!r} is not a file")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not an ONNX file: {err}") from err
    if not model.graph.node:
        raise ValueError(f"{str(path)!r} is not an ONNX model (it has no graph nodes)")
    return model


def _attributes(node) -> dict:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


class _Graph:
    """The analysed graph: nodes, constants, params, which values are static, the names."""

    def __init__(self, model):
        from onnx import numpy_helper

        graph = model.graph
        self.opset = _opset(model)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise ValueError(
                f"the graph has {len(inputs)} inputs {[i.name for i in inputs]}; "
                "from_onnx takes networks with exactly one input"
            )
        self.input = inputs[0]
        self.outputs = [o.name for o in graph.output]
        self.nodes = []
        problems = []
        for node in graph.node:
            attrs = _attributes(node)
            label = (
                f"{node.op_type} node {node.name or '(unnamed)'!r} (outputs {list(node.output)})"
            )
            if node.domain not in ("", "ai.onnx"):
                problems.append(
                    f"op {node.domain}::{node.op_type} at {label}: not in the default domain"
                )
            elif node.op_type not in onnx_ops.OPS:
                problems.append(f"unsupported op {node.op_type!r} at {label}")
            elif (why := onnx_ops.unsupported_attribute(node.op_type, attrs)) is not None:
                problems.append(f"{label}: unsupported {why}")
            if node.op_type == "Split":
                attrs["_outputs"] = len(node.output)
            self.nodes.append((node, attrs, label))
        if problems:
            raise ValueError(
                "the ONNX graph cannot be imported:\n  "
                + "\n  ".join(problems)
                + f"\nSupported ops: {', '.join(sorted(onnx_ops.OPS))}"
            )
        self._classify()

    def _classify(self):
        """Split values into static (NumPy at trace time) and dynamic (JAX), find the params."""
        from models.imported.onnx_ops import constant

        static = set(self.constants)
        dynamic = {self.input.name}
        for node, attrs, label in self.nodes:
            ins = [i for i in node.input if i]
            if node.op_type == "Constant":
                (value,) = constant(None, [], attrs)
                self.constants[node.output[0]] = value
                static.add(node.output[0])
                continue
            missing = [i for i in ins if i not in static and i not in dynamic]
            if missing:
                raise ValueError(f"{label} reads {missing}, which no earlier node produces")
            is_static = node.op_type in onnx_ops.SHAPE_OPS or all(i in static for i in ins)
            for position in onnx_ops.STATIC_INPUTS.get(node.op_type, ()):
                if position < len(node.input) and node.input[position] in dynamic:
                    raise ValueError(
                        f"{label}: input {position} ({node.input[position]!r}) must be known "
                        "without the input's values (a shape, axes or scales), but it is "
                        "computed from them; this cannot run under jax.jit"
                    )
            (static if is_static else dynamic).update(o for o in node.output if o)
        self.static = static
        self.dynamic_nodes = [n for n, _, _ in self.nodes if n.output and n.output[0] in dynamic]
        # weights: floating constants that some dynamic node reads outside its static slots
        used = set()
        for node in self.dynamic_nodes:
            slots = onnx_ops.STATIC_INPUTS.get(node.op_type, set())
            used.update(i for p, i in enumerate(node.input) if i and p not in slots)
        self.param_names = [
            name
            for name, value in self.constants.items()
            if name in used and np.issubdtype(value.dtype, np.floating)
        ]
        # floating constants read anywhere outside a static slot (what a float64 run promotes)
        read = {
            i
            for node, _, _ in self.nodes
            for p, i in enumerate(node.input)
            if i and p not in onnx_ops.STATIC_INPUTS.get(node.op_type, set())
        }
        self.float_constants = {
            name
            for name, value in self.constants.items()
            if name in read and np.issubdtype(value.dtype, np.floating)
        }
        missing = [o for o in self.outputs if o not in dynamic]
        if missing:
            raise ValueError(f"graph outputs {missing} do not depend on the input")
        # the graph's (first) output is 'out'; its own value name is not listed twice
        self.names = [o for n in self.dynamic_nodes for o in n.output if o and o != self.outputs[0]]
        self.dynamic = dynamic

    def forward(self, params, x, wanted):
        """``{name: value}`` for the requested names (``OUTPUT``: the first graph output)."""
        targets = {self.outputs[0] if name == OUTPUT else name for name in wanted}
        float_dtype = x.dtype
        jctx = onnx_ops.Context(xp=jnp, float_dtype=float_dtype, opset=self.opset)
        sctx = onnx_ops.Context(xp=np, float_dtype=float_dtype, opset=self.opset)
        # float constants in the run's precision (static arithmetic like 1/sqrt(d) included)
        static = {
            name: value.astype(float_dtype) if name in self.float_constants else value
            for name, value in self.constants.items()
        }
        env = dict(static)
        env.update(params)
        env[self.input.name] = x
        done = set()
        for node, attrs, _ in self.nodes:
            if node.op_type == "Constant":
                continue
            is_static = node.output[0] in self.static
            if is_static:
                ins = [static.get(i) if i else None for i in node.input]
                if node.op_type in onnx_ops.SHAPE_OPS and node.input[0] in self.dynamic:
                    ins[0] = env[node.input[0]]
                outs = onnx_ops.OPS[node.op_type](sctx, ins, attrs)
                for name, value in zip(node.output, outs, strict=False):
                    if name:
                        static[name] = np.asarray(value)
                        env[name] = static[name]
                continue
            slots = onnx_ops.STATIC_INPUTS.get(node.op_type, ())
            ins = [
                None if not i else (static[i] if p in slots else env[i])
                for p, i in enumerate(node.input)
            ]
            outs = onnx_ops.OPS[node.op_type](jctx, ins, attrs)
            for name, value in zip(node.output, outs, strict=False):
                if name:
                    env[name] = value
                    done.add(name)
            if targets <= done:
                break
        acts = {name: env[self.outputs[0] if name == OUTPUT else name] for name in wanted}
        return acts


class OnnxReference:
    """onnxruntime (float32) and ``onnx.reference`` on a float64 copy of the graph (float64);
    ``model`` is the imported ``onnx.ModelProto``."""

    def __init__(self, model, graph: _Graph):
        import onnxruntime

        self.name = f"onnxruntime {onnxruntime.__version__} (float32), onnx.reference (float64)"
        self.model = model
        self._graph = graph
        self._sessions = {}

    def _session(self, dtype: str):
        if dtype not in self._sessions:
            if dtype == "float32":
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3
                self._sessions[dtype] = onnxruntime.InferenceSession(
                    self.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            else:
                from onnx.reference import ReferenceEvaluator

                self._sessions[dtype] = ReferenceEvaluator(
                    _as_float64(self.model, self._graph), new_ops=_float64_kernels()
                )
        return self._sessions[dtype]

    def forward(self, x: np.ndarray) -> np.ndarray:
        dtype = str(x.dtype)
        out = self._session(dtype).run([self._graph.outputs[0]], {self._graph.input.name: x})[0]
        return np.asarray(out, dtype)

    def vjp(self, x, cotangent):
        return None  # onnxruntime's inference build has no gradients


def _float64_kernels() -> list:
    """Kernels for ``onnx.reference`` where its own are not float64-exact:

    * ``BatchNormalization``: its version-9 kernel runs training mode whenever ``momentum``
      is set (its schema default, so always); this one is the inference formula.
    * ``Erf``: its kernel computes in float32 (``np.vectorize(math.erf, otypes=['f'])``).
    * ``HardSwish`` and ``Gelu``: it has no kernels and expands their function bodies, whose
      constants are float32 (the nearest float32 to 1/6, sqrt(2)); these are the operators'
      definitions, ``x max(0, min(1, x/6 + 1/2))`` and ``x (1 + erf(x / sqrt 2)) / 2`` (or
      its tanh form).
    """
    from onnx.reference.op_run import OpRun
    from scipy.special import erf

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=None, training_mode=0):
            shape = (1, -1) + (1,) * (x.ndim - 2)
            inv = scale.reshape(shape) / np.sqrt(var.reshape(shape) + epsilon)
            return (((x - mean.reshape(shape)) * inv + bias.reshape(shape)).astype(x.dtype),)

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x):
            return (erf(x).astype(x.dtype),)

    class HardSwish(OpRun):
        op_domain = ""

        def _run(self, x):
            return ((x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),)

    class Gelu(OpRun):
        op_domain = ""

        def _run(self, x, approximate="none"):
            if approximate == "tanh":
                inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
                return ((0.5 * x * (1 + np.tanh(inner))).astype(x.dtype),)
            return ((0.5 * x * (1 + erf(x / np.sqrt(2)))).astype(x.dtype),)

    return [BatchNormalization, Erf, HardSwish, Gelu]


def _as_float64(model, graph: _Graph):
    """A copy of ``model`` whose weights, input, outputs and float ``Cast`` targets are float64;
    static float constants (``Resize`` scales) keep their dtype."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    params = graph.float_constants
    for tensor in model.graph.initializer:
        if tensor.name in params:
            tensor.CopyFrom(
                numpy_helper.from_array(
                    numpy_helper.to_array(tensor).astype(np.float64), tensor.name
                )
            )
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in params:
            value = graph.constants[node.output[0]].astype(np.float64)  # (a Constant's output)
            del node.attribute[:]
            node.attribute.append(
                onnx.helper.make_attribute("value", numpy_helper.from_array(value))
            )
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i in (TensorProto.FLOAT, TensorProto.FLOAT16):
                    attr.i = TensorProto.DOUBLE
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del model.graph.value_info[:]
    return model


def _graph_input_shape(graph: _Graph, layout: str, input_shape):
    dims = graph.input.type.tensor_type.shape.dim
    native = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if native:
        native[0] = None  # the batch axis is always free
    if input_shape is None:
        if not native:
            return None
        return _from_native_shape(native, layout)
    shape = tuple(None if d is None else int(d) for d in input_shape)
    if native and len(shape) != len(native):
        raise ValueError(
            f"input_shape {tuple(input_shape)} has rank {len(shape)}, but the graph's input "
            f"{graph.input.name!r} has rank {len(native)}"
        )
    fixed = _from_native_shape(native, layout) if native else shape
    for got, want in zip(shape, fixed, strict=False):
        if got is not None and want is not None and got != want:
            raise ValueError(
                f"input_shape {tuple(input_shape)} contradicts the graph's input shape "
                f"{tuple('*' if d is None else d for d in fixed)} (layout {layout!r})"
            )
    return (None, *shape[1:])


def _from_native_shape(native, layout):
    if layout == "NHWC" and len(native) == 4:
        return (native[0], native[2], native[3], native[1])
    return tuple(native)


def from_onnx(path_or_model, *, layout: str = "NHWC", input_shape=None) -> ImportedModel:
    """The ONNX network at ``path_or_model`` (a path or an ``onnx.ModelProto``) as a pure JAX
    model (see the module docstring for what is supported).

    ``input_shape`` (in ``layout``, ``None`` for a free axis) fixes axes the file leaves
    symbolic; inputs are checked against it. The batch axis is always free.

    Example::

        model = models.from_onnx("detector.onnx")
        logits, params = models.feature_fn(model, "p2o.Add.281")  # the value its Sigmoid reads
        result = inversion.invert_batch(lambda x: logits(params, x), targets)
    """
    layout = check_layout(layout)
    model = _load(path_or_model)
    graph = _Graph(model)
    if graph.input.type.tensor_type.elem_type not in (1, 11):  # FLOAT, DOUBLE
        raise ValueError(f"the graph's input {graph.input.name!r} is not floating-point")
    params = {name: jnp.asarray(graph.constants[name]) for name in graph.param_names}
    counts = {}
    for node in graph.dynamic_nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ImportedModel(
        params=params,
        forward=graph.forward,
        names=graph.names,
        layout=layout,
        source="onnx",
        input_shape=_graph_input_shape(graph, layout, input_shape),
        reference=OnnxReference(model, graph),
        description=f"opset {graph.opset}, {sum(counts.values())} nodes",
    )


__all__ = ["from_onnx"]
