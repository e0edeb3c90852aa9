"""The reference study's SimpleUNet, exactly.

    enc1       = relu(conv3×3(x, 1→16))                     32×32×16   (for a 32×32 input)
    pool1      = maxpool2×2(enc1)                            16×16×16
    enc2       = relu(conv3×3(pool1, 16→32))                 16×16×32
    pool2      = maxpool2×2(enc2)                             8×8×32
    bottleneck = relu(conv3×3(pool2, 32→64))                  8×8×64
    up2        = convT2×2/2(bottleneck, 64→32)               16×16×32
    dec2       = relu(conv3×3(concat(up2, enc2), 64→32))     16×16×32
    up1        = convT2×2/2(dec2, 32→16)                     32×32×16
    out        = conv3×3(concat(up1, enc1), 32→1)            32×32×1   (logits)

Parameters: 160 + 4,640 + 18,496 + 8,224 + 18,464 + 2,064 + 289 = 52,337.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from models.unet import UNet

SEED_UNET_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    features=(16, 32, 64),
    convs_per_block=1,
    pool="max",
    up="transpose",
    skips=True,
)
SEED_UNET_PARAMETERS = 52_337


def seed_unet(key: int | jax.Array = 0) -> UNet:
    """The seed study's SimpleUNet with weights initialised from ``key`` (an int seed or PRNG key).

    ``key``: a Python or numpy integer seed, one typed key ``jax.random.key(seed)`` (shape
    ``()``) or one raw key ``jax.random.PRNGKey(seed)``; anything else is a ``TypeError`` /
    ``ValueError`` naming ``key``.
    """
    return UNet(**SEED_UNET_CONFIG, rngs=nnx.Rngs(params=_check_key(key)))


def _check_key(key):
    if isinstance(key, bool):
        raise TypeError(f"key must be an int seed or a jax.random key, got the bool {key!r}")
    if isinstance(key, int | np.integer):
        return int(key)
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(
                    f"key must be ONE jax.random key of shape (), got a key array of shape "
                    f"{key.shape}"
                )
            return key
        raw = jax.eval_shape(jax.random.PRNGKey, 0)
        if key.dtype == raw.dtype and key.shape == raw.shape:
            return key
        raise TypeError(
            f"key must be an int seed, a jax.random.key(seed) or a raw {raw.dtype} key of shape "
            f"{raw.shape} (jax.random.PRNGKey), got an array of dtype {key.dtype} and shape "
            f"{key.shape}"
        )
    raise TypeError(
        f"key must be an int seed or a jax.random key (jax.random.key(seed)), got "
        f"{type(key).__name__} {key!r:.60}"
    )
