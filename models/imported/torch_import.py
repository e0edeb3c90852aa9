"""A ``torch.nn.Module`` as a pure JAX model, through torchax.

:func:`from_torch` turns a module in eval mode into an
:class:`~models.imported.model.ImportedModel`:

* **Weights.** ``params`` is the module's state as torchax extracts it
  (``torchax.interop.JittableModule``: parameters, buffers such as batch-norm running
  statistics and ``num_batches_tracked``, and tensor attributes; tied weights once), as JAX
  arrays, floating ones in float32.
* **Forward.** ``forward(params, x, names)`` runs the module's own ``forward`` on torchax
  tensors that wrap the (traced) JAX arrays, so every torch op becomes the JAX op torchax maps
  it to and the result is an ordinary JAX function: ``jit``, ``vmap``, ``grad``, ``jvp`` and
  ``linearize`` apply. It is jit-compiled once per set of requested names (and input shape
  and dtype), so eager calls do not re-run torch. A float64 input runs in float64 end to end:
  :class:`ImportedModel` casts the weights, torchax keeps its operands' dtype, and a float64
  call whose requested activations come out in a lower precision (an explicit ``.float()``
  in the module) raises ``RuntimeError``. Float32 convolutions and matmuls run at JAX's
  default precision for the backend.
* **Names.** The intermediates are torch module paths (``named_modules``, e.g.
  ``encoder.0.conv``) of the submodules whose output is one tensor, in the order their outputs
  are produced, found by one probe run of the module on ``example_input``. A module called
  ``k + 1`` times is named ``path`` for its first call and ``path:1`` … ``path:k`` for the
  others. The whole module's output is ``'out'``. Requested intermediates are captured by
  forward hooks, registered only for the call; once the last requested one is known the
  forward stops (a private exception from the hook), so :func:`models.feature_fn` of an
  early layer neither traces nor computes the rest.
* **Reference.** ``model.reference`` is the module in torch itself (float32 on the module,
  float64 on a ``double()`` copy made once, VJPs by autograd), for :func:`models.conformance`.

Limits (what torchax cannot turn into a JAX function, or what this import does not do):

* Python control flow on tensor *values* (``if x.sum() > 0``, ``.item()``, ``.tolist()``,
  ``.numpy()``, data-dependent shapes such as ``torch.unique``) needs concrete values, and the
  forward is always traced (it is jit-compiled even for an eager call). Control flow on
  shapes and Python attributes is fine (it is fixed in the trace).
* Tensors created inside ``forward`` (``torch.arange``, ``torch.zeros``, ``torch.tensor``)
  are JAX ones: the forward runs under ``torch.device('jax')``. One made on an explicit
  ``device='cpu'`` stays a torch tensor and cannot mix with the traced ones.
* An op torchax has no lowering for, such a CPU tensor, or control flow on tensor values is
  refused by ``from_torch`` itself, which traces the whole forward abstractly once
  (``jax.eval_shape``, nothing runs) and raises ``ValueError`` naming the innermost submodule
  and torchax's or JAX's message.
* Training mode is refused (batch norm would use batch statistics and update its running
  buffers, dropout is random): call ``module.eval()`` first. Buffer updates made inside
  ``forward`` are never written back.
* The whole module must return one tensor; submodules returning tuples, dicts or ``None`` are
  run but not named. The input shape is fixed to ``example_input``'s apart from the batch axis.
  A submodule whose path is ``out`` is listed as ``out:0`` (``out`` is the network output).
* The module's own forward hooks also run, on torchax tensors.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchax
from torchax.interop import JittableModule

from models.imported.model import OUTPUT, ImportedModel, cast_params, check_layout

__all__ = ["TorchReference", "from_torch"]


class _Captured(Exception):
    """Raised by a forward hook once every requested intermediate is known."""


def _qualified(path: str, call: int) -> str:
    return path if call == 0 else f"{path}:{call}"


def _unqualified(name: str) -> tuple[str, int]:
    path, sep, call = name.rpartition(":")
    return (path, int(call)) if sep and call.isdigit() else (name, 0)


def _check_module(module) -> None:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for path, sub in module.named_modules():
        if sub.training:
            where = "the module itself" if path == "" else f"submodule {path!r}"
            raise ValueError(
                f"{where} ({type(sub).__name__}) is in training mode: batch norm would use the "
                "batch's statistics and dropout would be random; call module.eval() first"
            )


def _example_array(example_input, layout: str) -> np.ndarray:
    if isinstance(example_input, torch.Tensor):
        t = example_input.detach().cpu()
        x = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    elif isinstance(example_input, np.ndarray | jax.Array | np.generic):
        x = np.asarray(example_input)
    else:
        raise TypeError(
            "example_input must be a torch tensor or a NumPy/JAX array, "
            f"got {type(example_input).__name__}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"example_input must be a floating-point array, got {x.dtype}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"example_input must have a non-empty leading batch axis, got shape {x.shape}"
        )
    if layout == "NHWC" and x.ndim not in (2, 4):
        raise ValueError(
            f"example_input has shape {x.shape}: layout 'NHWC' takes a batch of images "
            "(b, h, w, c) or of vectors (b, d); add the batch axis (x[None]) to a single image, "
            "or pass layout='NCHW' for a network on other ranks (passed through unchanged)"
        )
    return x


def _module_dtype_device(module) -> tuple[torch.dtype, torch.device]:
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def _probe(module, x_native: np.ndarray) -> list[str]:
    """Forward order of the single-tensor submodule outputs for one torch run on ``x``."""
    dtype, device = _module_dtype_device(module)
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def hook_for(path):
        def hook(_module, _args, output):
            call = calls.get(path, 0)
            calls[path] = call + 1
            if isinstance(output, torch.Tensor):
                order.append(_qualified(path, call))

        return hook

    try:
        for path, sub in module.named_modules():
            if path:
                handles.append(sub.register_forward_hook(hook_for(path)))
        with torch.no_grad():
            out = module(torch.from_numpy(np.array(x_native)).to(device=device, dtype=dtype))
    except Exception as err:  # torch's own error for an input the module cannot take
        raise ValueError(
            f"example_input of shape {x_native.shape} (the module's layout) does not fit the "
            f"module: torch raised {type(err).__name__}: {err}"
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"the module returns {type(out).__name__}, not one tensor; wrap it in a module "
            "whose forward returns the tensor to invert"
        )
    return order


class TorchReference:
    """The module run by torch itself, on arrays in the module's layout (see
    :class:`models.imported.conformance.Reference`): float32 on the module, float64 on a
    ``double()`` copy made on first use; VJPs by autograd."""

    def __init__(self, module: torch.nn.Module):
        self.name = f"torch {torch.__version__}"
        self._module = module
        self._copies: dict[torch.dtype, torch.nn.Module] = {}

    def _for(self, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.device]:
        own, device = _module_dtype_device(self._module)
        if dtype == own:
            return self._module, device
        if dtype not in self._copies:
            self._copies[dtype] = copy.deepcopy(self._module).to(dtype)
        return self._copies[dtype], device

    def _tensor(self, x):
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"the reference runs float32 or float64 arrays, got {x.dtype}")
        dtype = torch.float64 if x.dtype == np.float64 else torch.float32
        module, device = self._for(dtype)
        return module, torch.from_numpy(np.array(x)).to(device)

    def forward(self, x: np.ndarray) -> np.ndarray:
        module, xt = self._tensor(x)
        with torch.no_grad():
            return module(xt).cpu().numpy()

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        module, xt = self._tensor(x)
        xt.requires_grad_(True)
        with torch.enable_grad():
            out = module(xt)
            cot = torch.from_numpy(np.array(cotangent)).to(device=out.device, dtype=out.dtype)
            (grad,) = torch.autograd.grad(out, xt, grad_outputs=cot)
        return grad.cpu().numpy()


def _check_traceable(forward, params, x_native: np.ndarray, module) -> None:
    """Trace the whole forward abstractly (``jax.eval_shape``: nothing runs) and turn a failure
    into a ``ValueError`` naming the innermost submodule it happened in."""
    stack: list[str] = []
    handles = []

    def enter(path):
        return lambda *_: stack.append(path)  # returns None: the input is left alone

    def leave(path):
        def hook(*_):
            if stack[-1:] == [path]:
                stack.pop()

        return hook

    for path, sub in module.named_modules():
        if path:
            handles.append(sub.register_forward_pre_hook(enter(path)))
            handles.append(sub.register_forward_hook(leave(path)))
    shape = jax.ShapeDtypeStruct(x_native.shape, jnp.float32)
    try:
        jax.eval_shape(lambda p, x: forward(p, x, (OUTPUT,)), params, shape)
    except Exception as err:
        where = (
            f"in submodule {stack[-1]!r} ({type(module.get_submodule(stack[-1])).__name__})"
            if stack
            else "in the module's own forward"
        )
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"the module cannot be traced as a JAX function by torchax {torchax.__version__}, "
            f"{where}: {type(err).__name__}: {first} (an op without a JAX lowering, a tensor "
            "created inside forward on an explicit CPU device, or control flow on tensor "
            "values; see models.imported.torch_import)"
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def _make_forward(jm: JittableModule, env, paths: Mapping[str, torch.nn.Module]):
    param_keys, buffer_keys = tuple(jm.params), tuple(jm.buffers)

    def forward(params, x, names):
        wanted = {_unqualified(name) for name in names if name != OUTPUT}
        captured: dict[str, object] = {}
        calls: dict[str, int] = {}
        handles = []

        def hook_for(path):
            def hook(_module, _args, output):
                call = calls.get(path, 0)
                calls[path] = call + 1
                if (path, call) in wanted:
                    captured[_qualified(path, call)] = env.t2j_iso(output)
                    if len(captured) == len(wanted) and OUTPUT not in names:
                        raise _Captured

            return hook

        p = {k: params[k] for k in param_keys}
        b = {k: params[k] for k in buffer_keys}
        p, b, xt = env.j2t_iso((p, b, x))
        try:
            for path in sorted({path for path, _ in wanted}):
                handles.append(paths[path].register_forward_hook(hook_for(path)))
            with warnings.catch_warnings():
                # torch's decompositions cast indices to int64, which JAX without x64
                # truncates to int32 with a warning; the indices are small.
                warnings.filterwarnings(
                    "ignore", message="Explicitly requested dtype int64", category=UserWarning
                )
                with env, torch.device("jax"):  # tensors made inside forward are JAX ones
                    out = jm.functional_call("forward", p, b, xt)
            captured[OUTPUT] = env.t2j_iso(out)
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if x.dtype == jnp.float64:  # the float64 promise: no silent float32 step
            for name, y in captured.items():
                if jnp.issubdtype(y.dtype, jnp.floating) and y.dtype != jnp.float64:
                    raise RuntimeError(
                        f"{name!r} came out {y.dtype} for a float64 input: the module (an "
                        "explicit cast in its forward, or torchax's lowering of one of its ops) "
                        "does not run in float64 end to end"
                    )
        return {name: captured[name] for name in names}

    return jax.jit(forward, static_argnums=2)


def from_torch(module, example_input, *, layout: str = "NHWC") -> ImportedModel:
    """``module`` (a ``torch.nn.Module`` in eval mode) as an :class:`ImportedModel`.

    ``example_input``: one batch in ``layout`` (a torch tensor or a NumPy/JAX array), run once
    by torch to find the intermediates' names and order; it fixes the input shape apart from
    the batch axis.

    >>> import numpy as np, torch
    >>> import models
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    >>> model = models.from_torch(net, np.zeros((1, 8, 8, 3), np.float32))
    >>> models.layer_names(model)
    ['0', '1', 'out']
    >>> model(np.ones((2, 8, 8, 3), np.float32)).shape
    (2, 6, 6, 4)
    """
    _check_module(module)
    layout = check_layout(layout)
    x = _example_array(example_input, layout)
    x_native = np.ascontiguousarray(
        np.transpose(x, (0, 3, 1, 2)) if layout == "NHWC" and x.ndim == 4 else x
    )
    names = _probe(module, x_native)

    env = torchax.default_env()
    jm = JittableModule(module)
    with warnings.catch_warnings():
        # int64 buffers (num_batches_tracked) become int32 without x64; they are counters
        warnings.filterwarnings("ignore", message=".*int64.*", category=UserWarning)
        state = env.t2j_copy({**jm.buffers, **jm.params})
    params = cast_params(state, jnp.float32)
    paths = dict(module.named_modules())
    forward = _make_forward(jm, env, paths)
    _check_traceable(forward, params, x_native, module)
    return ImportedModel(
        params=params,
        forward=forward,
        names=names,
        layout=layout,
        source="torch",
        input_shape=(None, *x.shape[1:]),
        reference=TorchReference(module),
        description=type(module).__name__,
    )
