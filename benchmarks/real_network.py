"""A real pretrained network inverted at equal wall time: the project against PyTorch eager.

    python -m benchmarks.real_network [--size 64] [--batch 4] [--budget-s 30] [--visible]
                                      [--json OUT]

The network: the PP-OCRv4 text detector shipped in the ``rapidocr-onnxruntime`` wheel, cut
before its final Sigmoid (the target is the logit map: the probability map is saturated at a
flat start and has an exactly zero gradient there). The project imports it with
``models.from_onnx``; PyTorch runs the same file converted by onnx2torch (after this module
moves the file's ``Constant``-node weights into initializers, which onnx2torch requires), so
both sides compute the same function (checked: the two outputs agree to float32 rounding).

The problem: ``batch`` crops (``size`` x ``size``) of ``skimage.data.page()`` in ``[0, 1]``,
the grey page repeated over the three channels; targets are their logits; every start is the
flat grey image 0.5; box ``[0, 1]``. Both sides run projected Adam (learning rate ``--lr``)
for ``--budget-s`` seconds of wall time, the project through ``inversion.invert_batch`` with
``time_limit`` (compilation included), PyTorch eagerly (``torch.optim.Adam`` on the inputs,
clamped to the box after each step). Reported per side: steps, steps/s, the median output
residual ``||f(x) - y|| / ||y||``, the median PSNR of ``x`` against the true crop (and of the
start), with ``--visible`` the median visible-part error (:func:`visible_errors`), and,
separately, the steady-state rate of one value-and-gradient evaluation (jitted
for JAX, forward + backward for PyTorch), which isolates the per-step cost. The machine is
printed with the figures. Needs the ``bench`` extra (onnx2torch, torchvision).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np
import optax

import inversion
from inversion import cpu_devices


def problem(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x_true, x0)``: ``batch`` crops of the page along its diagonal, and the grey start."""
    from skimage import data

    page = data.page().astype(np.float32) / 255.0
    h, w = page.shape
    corners = np.linspace(0, min(h, w) - size, batch).astype(int)
    crops = np.stack([page[c : c + size, c : c + size] for c in corners])
    x_true = np.repeat(crops[..., None], 3, axis=-1)
    return x_true, np.full_like(x_true, 0.5)


def torch_module(proto, output: str):
    """The ONNX graph cut at ``output``, as a torch module by onnx2torch (NCHW)."""
    import onnx
    import onnx2torch
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    proto = onnx.utils.Extractor(proto).extract_model([graph.input[0].name], [output])
    return onnx2torch.convert(proto).eval()


def run_torch(module, targets, x0, budget_s: float, lr: float) -> dict:
    import torch

    y = torch.from_numpy(np.ascontiguousarray(targets.transpose(0, 3, 1, 2)))
    x = torch.from_numpy(np.ascontiguousarray(x0.transpose(0, 3, 1, 2))).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for p in module.parameters():
        p.requires_grad_(False)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        optimizer.zero_grad()
        loss = ((module(x) - y) ** 2).mean(dim=(1, 2, 3)).sum()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        steps += 1
    seconds = time.perf_counter() - start
    return {"x": x.detach().numpy().transpose(0, 2, 3, 1), "steps": steps, "seconds": seconds}


def run_project(fn, targets, x0, budget_s: float, lr: float) -> dict:

    from inversion import solvers

    start = time.perf_counter()
    result = inversion.invert_batch(
        fn,
        targets,
        x0=x0,
        solver=solvers.Optax(optax.adam(lr)),
        steps=10**7,
        problem=inversion.Problem(bounds=(0.0, 1.0)),
        execution=inversion.Execution(time_limit=budget_s),
    )
    seconds = time.perf_counter() - start
    return {"x": np.asarray(result.x), "steps": int(np.max(result.steps)), "seconds": seconds}


def psnr(x, x_true) -> np.ndarray:
    mse = np.mean((np.asarray(x, np.float64) - x_true) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-30))


def residual(f_batch, x, targets) -> np.ndarray:
    y = np.asarray(f_batch(np.asarray(x, np.float32)), np.float64)
    t = np.asarray(targets, np.float64)
    return np.linalg.norm((y - t).reshape(len(t), -1), axis=1) / np.linalg.norm(
        t.reshape(len(t), -1), axis=1
    )


def evaluation_rate(step, seconds: float = 3.0) -> float:
    step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - start)


def visible_errors(fn, x_hat, x_true, x0) -> np.ndarray:
    """Per row, ``||P (x_hat - x*)|| / ||P (x0 - x*)||`` with ``P`` the projection onto the row
    space of ``J`` at ``x*`` (``Certificate.part_errors``): the error in the part the output
    determines, relative to the start's."""
    from inversion.analysis import certify

    rows = zip(x_hat, x_true, x0, strict=True)
    return np.asarray(
        [certify(fn, xt, vectors=True).part_errors(xh, xt, s)[0] for xh, xt, s in rows]
    )


def measure(*, size: int, batch: int, budget_s: float, lr: float, visible: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    import models
    from models import pretrained

    model, name = pretrained.text_detector()
    proto = model.reference.model  # the onnx.ModelProto
    logits, params = models.feature_fn(model, name)
    f_batch = jax.jit(lambda x: logits(params, x))
    fn = models.per_example(logits, params)
    module = torch_module(proto, name)
    x_true, x0 = problem(size, batch)
    targets = np.asarray(f_batch(x_true))
    with torch.no_grad():
        torch_y = module(torch.from_numpy(x_true.transpose(0, 3, 1, 2).copy())).numpy()
    agreement = float(np.max(np.abs(torch_y.transpose(0, 2, 3, 1) - targets)))

    value_and_grad = jax.jit(
        jax.value_and_grad(
            lambda x: jnp.sum(jnp.mean((logits(params, x) - targets) ** 2, (1, 2, 3)))
        )
    )
    xj = jnp.asarray(x0)
    jax_rate = evaluation_rate(lambda: jax.block_until_ready(value_and_grad(xj)))
    xt = torch.from_numpy(x0.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    yt = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy())

    def torch_step():
        xt.grad = None
        ((module(xt) - yt) ** 2).mean(dim=(1, 2, 3)).sum().backward()

    torch_rate = evaluation_rate(torch_step)

    sides = {
        "pytorch eager": run_torch(module, targets, x0, budget_s, lr),
        "project": run_project(fn, targets, x0, budget_s, lr),
    }
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {len(jax.devices())} devices), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "size": size,
        "batch": batch,
        "budget_s": budget_s,
        "lr": lr,
        "torch_vs_jax_logits_max_abs": agreement,
        "value_and_grad_per_s": {"project (jit)": jax_rate, "pytorch eager": torch_rate},
        "start_psnr_median": float(np.median(psnr(x0, x_true))),
        "start_residual_median": float(np.median(residual(f_batch, x0, targets))),
    }
    for side, run in sides.items():
        out[side] = {
            "steps": run["steps"],
            "seconds": run["seconds"],
            "steps_per_s": run["steps"] / run["seconds"],
            "residual_median": float(np.median(residual(f_batch, run["x"], targets))),
            "psnr_median": float(np.median(psnr(run["x"], x_true))),
        }
        if visible:
            errors = visible_errors(fn, run["x"], x_true, x0)
            out[side]["visible_error_median"] = float(np.median(errors))
    return out


def main(argv=None) -> dict:
    cpu_devices.configure()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=30.0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument(
        "--visible", action="store_true", help="also the visible-part error (float64 certificate)"
    )
    args = parser.parse_args(argv)
    out = measure(
        size=args.size, batch=args.batch, budget_s=args.budget_s, lr=args.lr, visible=args.visible
    )
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
