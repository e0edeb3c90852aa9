"""Grey-scale sample images shipped inside the scikit-image wheel (never downloaded)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from models.data.dataset import check_int

__all__ = ["SAMPLE_IMAGES", "sample_image"]

# name -> skimage.data loader. Only images whose files ship in the wheel (skimage/data/*.png,
# *.jpg), which skimage.data reads from its own folder without pooch or a network connection;
# tests/models/test_data.py loads every one with sockets disabled.
SAMPLE_IMAGES: dict[str, str] = {
    "camera": "camera",
    "phantom": "shepp_logan_phantom",
    "astronaut": "astronaut",
    "brick": "brick",
    "cell": "cell",
    "chelsea": "chelsea",
    "checkerboard": "checkerboard",
    "coffee": "coffee",
    "coins": "coins",
    "grass": "grass",
    "gravel": "gravel",
    "horse": "horse",
    "moon": "moon",
    "page": "page",
    "rocket": "rocket",
    "text": "text",
}


@functools.cache
def _load(name: str) -> np.ndarray:
    """``skimage.data.<loader>()`` as float grey levels in ``[0, 1]``, shape (H, W)."""
    import skimage.color
    import skimage.data
    import skimage.util

    image = getattr(skimage.data, SAMPLE_IMAGES[name])()
    image = skimage.util.img_as_float(image)
    if image.ndim == 3:
        if image.shape[-1] == 4:
            image = skimage.color.rgba2rgb(image)
        image = skimage.color.rgb2gray(image)
    return np.clip(image, 0.0, 1.0)


def sample_image(name: str, *, size: int | None = None) -> Float[Array, "h w 1"]:
    """A scikit-image sample image as float32 grey levels in ``[0, 1]``, shape ``(H, W, 1)``.

    Integer images are divided by their type's maximum (``img_as_float``), colour images are
    reduced to luminance ``Y = 0.2125 R + 0.7154 G + 0.0721 B`` (``rgb2gray``), booleans map to
    ``{0, 1}``. With ``size`` the image is resized to ``size × size`` (bilinear, Gaussian
    anti-aliasing when shrinking; the aspect ratio is not kept), which stays in ``[0, 1]``.

    Args:
        name: one of `SAMPLE_IMAGES` (``'camera'``, ``'phantom'``, ``'astronaut'``, …).
        size: optional output height and width, ``>= 1``.
    """
    if not isinstance(name, str) or name not in SAMPLE_IMAGES:
        raise ValueError(
            f"unknown sample image {name!r}; expected one of {', '.join(sorted(SAMPLE_IMAGES))}"
        )
    if size is not None:
        size = check_int("size", size, minimum=1)
    image = _load(name)
    if size is not None:
        if image.shape != (size, size):
            import skimage.transform

            shrink = size < max(image.shape)
            image = skimage.transform.resize(
                image, (size, size), order=1, anti_aliasing=shrink, preserve_range=True
            )
    return jnp.asarray(np.clip(image, 0.0, 1.0)[..., None], dtype=jnp.float32)
