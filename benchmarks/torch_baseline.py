"""The PyTorch loop a PyTorch user would write to invert the seed U-Net (benchmark baseline).

Eager mode, one batched tensor of inputs with ``requires_grad``, ``torch.optim.Adam`` on the
inputs, loss = Σ_targets mean((f(x_i) − y_i)²), so every target's gradient is its own. The
network is the seed SimpleUNet with the *same weights* as the JAX model, so both sides do the
same arithmetic. Needs the optional ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import time

import numpy as np


def _torch():
    try:
        import torch
    except ImportError as err:  # optional dependency
        raise RuntimeError(
            "the PyTorch baseline needs torch: .venv/bin/pip install -e '.[bench]'"
        ) from err
    return torch


def seed_unet_torch(params: dict[str, tuple[np.ndarray, np.ndarray]]):
    """A torch SimpleUNet whose layers carry the given (HWIO kernel, bias) pairs.

    ``params`` maps the seed U-Net's ``conv_layers()`` names ('enc1.conv1', 'enc2.conv1',
    'bottleneck.conv1', 'up2', 'dec2.conv1', 'up1', 'out') to numpy arrays in the JAX layout. Convs: OIHW = HWIO.transpose(3, 2, 0, 1). Transposed convs: torch's
    (I, O, H, W) kernel scatters without a flip, ``lax.conv_transpose`` flips, hence [::-1, ::-1].
    """
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    def conv(name, transpose=False):
        k, b = params[name]
        h, w, c_in, c_out = k.shape
        if transpose:
            layer = nn.ConvTranspose2d(c_in, c_out, h, stride=2)
            weight = np.ascontiguousarray(k[::-1, ::-1].transpose(2, 3, 0, 1))
        else:
            layer = nn.Conv2d(c_in, c_out, h, padding=h // 2)
            weight = np.ascontiguousarray(k.transpose(3, 2, 0, 1))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(np.array(b)))
        return layer

    class SimpleUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2 = conv("enc1.conv1"), conv("enc2.conv1")
            self.bottleneck = conv("bottleneck.conv1")
            self.up2, self.dec2 = conv("up2", transpose=True), conv("dec2.conv1")
            self.up1, self.out = conv("up1", transpose=True), conv("out")

        def forward(self, x):
            e1 = F.relu(self.enc1(x))
            e2 = F.relu(self.enc2(F.max_pool2d(e1, 2)))
            b = F.relu(self.bottleneck(F.max_pool2d(e2, 2)))
            d2 = F.relu(self.dec2(torch.cat([self.up2(b), e2], 1)))
            return self.out(torch.cat([self.up1(d2), e1], 1))

    model = SimpleUNet().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def forward_nhwc(model, x_nhwc: np.ndarray) -> np.ndarray:
    """Run the torch model on an NHWC numpy batch and return NHWC numpy."""
    torch = _torch()
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)


def invert_adam(
    model,
    targets_nhwc: np.ndarray,
    x0_nhwc: np.ndarray,
    *,
    steps: int,
    lr: float,
    cosine: bool = False,
    bounds: tuple[float, float] | None = None,
):
    """Adam on the inputs for ``steps`` steps; returns (x NHWC, seconds).

    ``cosine``: the learning rate follows ``CosineAnnealingLR`` from ``lr`` to 0 over the
    steps; ``bounds``: ``(lo, hi)``, the inputs are clamped into the box after every step.
    """
    torch = _torch()
    y = torch.from_numpy(np.ascontiguousarray(targets_nhwc.transpose(0, 3, 1, 2)))
    x = torch.from_numpy(np.ascontiguousarray(x0_nhwc.transpose(0, 3, 1, 2))).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    per_target = y[0].numel()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).sum() / per_target
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(bounds[0], bounds[1])
    seconds = time.perf_counter() - start
    return x.detach().numpy().transpose(0, 2, 3, 1), seconds
