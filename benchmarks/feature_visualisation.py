"""Visualisations per second: ``inversion.visualize`` against a lucent-style PyTorch eager loop.

Command:  python -m benchmarks.feature_visualisation [--channels 64] [--steps 64]
          [--layer bottleneck] [--repeats 2] [--out benchmarks/feature-vis-cpu-2core.json]

Both sides visualise the first ``channels`` channels of one layer of the seed U-Net (the same
weights; torch twin: ``benchmarks.torch_baseline.seed_unet_torch``), each channel's mean
activation maximised by Adam (learning rate 0.05) for ``steps`` steps on a Fourier
parameterisation with 1/f scaling (lucent's ``fft_image``: orthonormal inverse real FFT, / 4,
sigmoid to [0, 1]) under the same random transforms: pad 4 (constant 0.5), jitter 4, scale
0.9-1.1, rotate ±10°, jitter 4 (bilinear, border values; torch: ``affine_grid`` /
``grid_sample``). Rows:

* ``jax``: ``inversion.visualize``, all channels one vmapped program (first call: compile +
  run; then the median of ``repeats`` warm calls);
* ``torch batched``: the eager loop on one batch holding every channel's image (loss = −Σ_c
  mean activation of channel c in image c): the fastest way to write it in PyTorch;
* ``torch one at a time``: lucent's usual ``render_vis`` call, one channel per loop (timed on
  ``single`` channels and scaled).

Prints the figures and the machine; writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import jax
import numpy as np

from benchmarks import benchmarking
from benchmarks import torch_baseline as tb

PAD, JITTER, JITTER_AFTER = 4, 4, 4
SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
DEGREES = tuple(range(-10, 11)) + (0,) * 5
LR = 0.05


def _torch_layer(net, layer: str):
    """The seed U-Net twin cut at ``layer`` (enc1, enc2, bottleneck, dec2, up1)."""
    import torch
    import torch.nn.functional as F

    def fn(x):
        e1 = F.relu(net.enc1(x))
        if layer == "enc1":
            return e1
        e2 = F.relu(net.enc2(F.max_pool2d(e1, 2)))
        if layer == "enc2":
            return e2
        b = F.relu(net.bottleneck(F.max_pool2d(e2, 2)))
        if layer == "bottleneck":
            return b
        d2 = F.relu(net.dec2(torch.cat([net.up2(b), e2], 1)))
        if layer == "dec2":
            return d2
        return net.up1(d2)

    return fn


def torch_visualize(fn, channels: list[int], *, size: int, steps: int, seed: int = 0):
    """Lucent-style eager loop; one image per channel in one batch. Returns (images, seconds)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(channels)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / size)
    scale_t = torch.tensor(scale, dtype=torch.float32)[None, None]
    spectrum = (0.01 * torch.randn(n, 1, size, size // 2 + 1, 2)).requires_grad_(True)
    opt = torch.optim.Adam([spectrum], lr=LR)
    index = torch.arange(n)
    chans = torch.tensor(channels)

    def render():
        s = torch.complex(spectrum[..., 0], spectrum[..., 1]) * scale_t
        img = torch.fft.irfft2(s, s=(size, size), norm="ortho") / 4.0
        return torch.sigmoid(img)

    def affine(x):
        s = float(rng.choice(SCALES))
        t = math.radians(float(rng.choice(DEGREES)))
        c, si = math.cos(t) / s, math.sin(t) / s
        theta = torch.tensor([[c, si, 0.0], [-si, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def jitter(x, d):
        dy, dx = rng.integers(0, d, 2)
        return x[..., dy : dy + x.shape[2] - d, dx : dx + x.shape[3] - d]

    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x = F.pad(render(), (PAD,) * 4, value=0.5)
        x = jitter(affine(jitter(x, JITTER)), JITTER_AFTER)
        acts = fn(x)
        loss = -acts[index, chans].mean(dim=(1, 2)).sum()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return render().detach().numpy(), seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--layer", default="bottleneck")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--single", type=int, default=4, help="channels timed one at a time")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    import inversion
    import models
    from inversion.visualize import channels as channel_readouts
    from inversion.visualize import default_solver
    from inversion.visualize_transforms import standard

    if args.threads:
        torch.set_num_threads(args.threads)
    net = models.seed_unet(0)
    feature, params = models.feature_fn(net, args.layer)
    fn = lambda x: feature(params, x[None])[0]  # noqa: E731
    width = jax.eval_shape(fn, jax.ShapeDtypeStruct((32, 32, 1), np.float32)).shape[-1]
    chans = [c % width for c in range(args.channels)]
    transforms = standard(
        pad=PAD, jitter=JITTER, scales=SCALES, degrees=DEGREES, jitter_after=JITTER_AFTER
    )

    def jax_run(seed):
        res = inversion.visualize(
            fn,
            channel_readouts(chans),
            shape=(32, 32, 1),
            key=jax.random.key(seed),
            transforms=transforms,
            steps=args.steps,
            solver=default_solver(LR),
        )
        return jax.block_until_ready(res)

    info = benchmarking.machine()
    print("machine:", benchmarking.describe(info), "(shared with other jobs)")
    first = benchmarking.timed(lambda: jax_run(0))
    warm = sorted(benchmarking.timed(lambda s=s: jax_run(s)) for s in range(1, args.repeats + 1))
    jax_warm = warm[len(warm) // 2]
    score = np.asarray(jax_run(0).score[:, 0])

    torch_net = tb.seed_unet_torch(
        {
            n: (np.asarray(m.kernel[...]), np.asarray(m.bias[...]))
            for n, m in net.conv_layers().items()
        }
    )
    tfn = _torch_layer(torch_net, args.layer)
    torch_batched = []
    for r in range(args.repeats):
        images, seconds = torch_visualize(tfn, chans, size=32, steps=args.steps, seed=r)
        torch_batched.append(seconds)
    torch_batched = sorted(torch_batched)[len(torch_batched) // 2]
    with torch.no_grad():
        t_acts = tfn(torch.from_numpy(images))
    torch_score = t_acts[torch.arange(len(chans)), torch.tensor(chans)].mean(dim=(1, 2)).numpy()
    single = (
        sum(
            torch_visualize(tfn, [chans[i]], size=32, steps=args.steps, seed=i)[1]
            for i in range(args.single)
        )
        / args.single
    )

    n = len(chans)
    rows = {
        "jax_first_call": {"seconds": first, "per_second": n / first},
        "jax_warm": {"seconds": jax_warm, "per_second": n / jax_warm},
        "torch_batched": {"seconds": torch_batched, "per_second": n / torch_batched},
        "torch_one_at_a_time": {"seconds": single * n, "per_second": 1 / single},
    }
    print(
        f"seed U-Net layer {args.layer}: {n} channel visualisations, {args.steps} Adam steps, "
        f"Fourier 1/f, pad/jitter/scale/rotate/jitter"
    )
    for name, row in rows.items():
        print(f"  {name:22s} {row['seconds']:8.2f} s   {row['per_second']:8.2f} visualisations/s")
    print(
        f"  speed-up warm jax / torch batched {rows['jax_warm']['per_second'] / rows['torch_batched']['per_second']:.1f}x, "
        f"/ torch one at a time {rows['jax_warm']['per_second'] / rows['torch_one_at_a_time']['per_second']:.1f}x; "
        f"first call (compile incl.) / torch batched {rows['jax_first_call']['per_second'] / rows['torch_batched']['per_second']:.1f}x"
    )
    print(
        f"  channel mean reached: jax median {np.median(score):.3f}, torch batched median "
        f"{np.median(torch_score):.3f}"
    )
    record = {
        "machine": info,
        "config": vars(args),
        "rows": rows,
        "score_median": {"jax": float(np.median(score)), "torch": float(np.median(torch_score))},
        "torch_threads": torch.get_num_threads(),
    }
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
