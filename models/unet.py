"""A configurable U-Net built from the pure layers of :mod:`models.layers`.

Structure, for ``features = (f_1, …, f_D)`` (D levels, D − 1 down-samplings):

    enc_l   = block(x_l)                       l = 1 … D−1, each `convs_per_block` 3×3 convs + ReLU
    pool_l  = down(enc_l)                      'max' | 'avg' pooling 2×2/2, or 'stride': the next
                                               block's first conv has stride 2 (no pool_l)
    bottleneck = block(pool_{D−1})             f_{D−1} → f_D channels
    up_l    = up(dec_{l+1})                    'transpose': 2×2/2 transposed conv f_{l+1} → f_l;
                                               'bilinear': ×2 bilinear upsampling + 1×1 conv
    cat_l   = concat(up_l, enc_l)              only with skips=True (2·f_l channels)
    dec_l   = block(cat_l)                     l = D−1 … 2
    dec_1   = convs_per_block − 1 convs 3×3 + ReLU on cat_1 (absent when convs_per_block = 1)
    out     = 3×3 conv → out_channels, no activation (logits)

With ``features=(16, 32, 64)``, ``convs_per_block=1``, max pooling, transposed up-sampling
and skips this is exactly the reference study's SimpleUNet (see :func:`models.seed_unet`).
Every intermediate has a stable name (``enc1, pool1, …, bottleneck, up2, cat2, dec2, up1,
cat1, [dec1], out``), returned in forward order by :meth:`UNet.features`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers
from models.init import he_normal

POOLS = ("max", "avg", "stride")
UPS = ("transpose", "bilinear")


class UNetConfig(NamedTuple):
    """The constructor arguments of a :class:`UNet` (hashable, JSON-friendly via ``_asdict``)."""

    in_channels: int
    out_channels: int
    features: tuple[int, ...]
    convs_per_block: int
    pool: str
    up: str
    skips: bool


class _Conv(nnx.Module):
    """A conv with HWIO kernel and bias, applied with :func:`models.layers.conv2d`."""

    def __init__(self, c_in: int, c_out: int, size: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(he_normal(rngs.params(), (size, size, c_in, c_out)))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x, *, stride: int = 1):
        return layers.conv2d(x, self.kernel[...], self.bias[...], stride=stride)


class _ConvTranspose(nnx.Module):
    """A 2×2/2 transposed conv (HWIO kernel) via :func:`models.layers.conv_transpose2d`."""

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(he_normal(rngs.params(), (2, 2, c_in, c_out)))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x):
        return layers.conv_transpose2d(x, self.kernel[...], self.bias[...], stride=2)


class _Block(nnx.Module):
    """``n`` 3×3 convs each followed by ReLU; the first may have stride 2."""

    def __init__(self, c_in: int, c_out: int, n: int, *, rngs: nnx.Rngs):
        channels = [c_in] + [c_out] * n
        self.convs = nnx.List(
            [_Conv(a, b, 3, rngs=rngs) for a, b in zip(channels[:-1], channels[1:], strict=True)]
        )

    def __call__(self, x, *, first_stride: int = 1):
        for i, conv in enumerate(self.convs):
            x = layers.relu(conv(x, stride=first_stride if i == 0 else 1))
        return x


class UNet(nnx.Module):
    """Configurable U-Net; see the module docstring for the exact structure and names."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: tuple[int, ...] = (16, 32, 64),
        convs_per_block: int = 1,
        pool: str = "max",
        up: str = "transpose",
        skips: bool = True,
        *,
        rngs: nnx.Rngs,
    ):
        features = tuple(features)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if len(features) < 2 or any(not isinstance(f, int) or f < 1 for f in features):
            raise ValueError(
                f"features must hold ≥ 2 positive ints (one per level), got {features}"
            )
        if convs_per_block not in (1, 2):
            raise ValueError(f"convs_per_block must be 1 or 2, got {convs_per_block!r}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        if up not in UPS:
            raise ValueError(f"unknown up {up!r}; expected one of {UPS}")
        self.config = UNetConfig(
            in_channels=in_channels,
            out_channels=out_channels,
            features=features,
            convs_per_block=convs_per_block,
            pool=pool,
            up=up,
            skips=bool(skips),
        )
        depth, n = len(features), convs_per_block
        self.encoders = nnx.List(
            [
                _Block(c, f, n, rngs=rngs)
                for c, f in zip((in_channels,) + features[:-2], features[:-1], strict=True)
            ]
        )
        self.bottleneck = _Block(features[-2], features[-1], n, rngs=rngs)
        ups, decoders = [], []
        for level in range(depth - 1, 0, -1):  # level l up-samples f_{l+1} → f_l (1-based)
            f_low, f = features[level], features[level - 1]
            ups.append(
                _ConvTranspose(f_low, f, rngs=rngs)
                if up == "transpose"
                else _Conv(f_low, f, 1, rngs=rngs)
            )
            c_in = 2 * f if skips else f
            n_convs = n if level > 1 else n - 1
            decoders.append(_Block(c_in, f, n_convs, rngs=rngs) if n_convs else None)
        self.ups = nnx.List(ups)
        self.decoders = nnx.List(decoders)
        top = 2 * features[0] if skips else features[0]
        self.out = _Conv(features[0] if n > 1 else top, out_channels, 3, rngs=rngs)

    @property
    def depth(self) -> int:
        return len(self.config.features)

    def check_input(self, x) -> None:
        """ValueError unless x is NHWC with ``in_channels`` channels and size divisible by 2^(D−1)."""
        cfg = self.config
        if getattr(x, "ndim", None) != 4:
            raise ValueError(
                f"UNet input must be NHWC of rank 4, got shape {getattr(x, 'shape', None)}"
            )
        if x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects {cfg.in_channels} input channels, got {x.shape[-1]} (shape {x.shape})"
            )
        factor = 2 ** (self.depth - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"spatial size {x.shape[1]}×{x.shape[2]} must be divisible by 2^(depth−1) = {factor}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"UNet input must be floating point, got dtype {x.dtype}")

    def features(self, x) -> dict[str, jax.Array]:
        """All named intermediates, in forward order (the last one is ``out``)."""
        self.check_input(x)
        cfg, acts, skips = self.config, {}, []
        stride = 2 if cfg.pool == "stride" else 1
        for level, block in enumerate(self.encoders, start=1):
            x = block(x, first_stride=stride if level > 1 else 1)
            acts[f"enc{level}"] = x
            skips.append(x)
            if cfg.pool == "max":
                x = acts[f"pool{level}"] = layers.max_pool2d(x)
            elif cfg.pool == "avg":
                x = acts[f"pool{level}"] = layers.avg_pool2d(x)
        x = acts["bottleneck"] = self.bottleneck(x, first_stride=stride)
        for level, up, decoder in zip(
            range(self.depth - 1, 0, -1), self.ups, self.decoders, strict=True
        ):
            x = acts[f"up{level}"] = (
                up(x) if cfg.up == "transpose" else up(layers.upsample_bilinear(x))
            )
            if cfg.skips:
                x = acts[f"cat{level}"] = layers.concat_skip(x, skips[level - 1])
            if decoder is not None:
                x = acts[f"dec{level}"] = decoder(x)
        acts["out"] = self.out(x)
        return acts

    def __call__(self, x):
        return self.features(x)["out"]

    def conv_layers(self) -> dict[str, nnx.Module]:
        """Every layer with weights, in forward order: ``enc1.conv1``, …, ``bottleneck.conv1``,
        ``up2``, ``dec2.conv1``, …, ``out``; each has ``kernel`` (HWIO) and ``bias`` params."""
        named: dict[str, nnx.Module] = {}
        for level, block in enumerate(self.encoders, start=1):
            named.update({f"enc{level}.conv{i}": c for i, c in enumerate(block.convs, start=1)})
        named.update({f"bottleneck.conv{i}": c for i, c in enumerate(self.bottleneck.convs, 1)})
        for level, up, decoder in zip(
            range(self.depth - 1, 0, -1), self.ups, self.decoders, strict=True
        ):
            named[f"up{level}"] = up
            if decoder is not None:
                named.update({f"dec{level}.conv{i}": c for i, c in enumerate(decoder.convs, 1)})
        named["out"] = self.out
        return named

    def layer_names(self) -> list[str]:
        """Names of the intermediates, in forward order (independent of the input size)."""
        size = 2 ** (self.depth - 1)
        probe = jax.ShapeDtypeStruct((1, size, size, self.config.in_channels), jnp.float32)
        graphdef, state = nnx.split(self)
        names: list[str] = []  # filled while tracing: eval_shape would sort the dict's keys

        def trace(state, x):
            names.extend(nnx.merge(graphdef, state).features(x))

        jax.eval_shape(trace, state, probe)
        return names
