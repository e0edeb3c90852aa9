"""Offline data sets, generated or read from files shipped in installed wheels (never downloaded).

Every data set is a `Dataset` ``(images, masks, labels)``: float32 NHWC images in ``[0, 1]``,
float32 ``(N, H, W, 1)`` foreground masks in ``{0, 1}``, and int32 labels or ``None``.
Every random data set is a deterministic function of an explicit JAX PRNG key.

* `digits` — scikit-learn's 8×8 handwritten digits, resized; mask = ink; labels = digit class.
* `synthetic_scenes` — bright ellipses, rectangles and triangles on textured, noisy backgrounds.
* `phantoms` — randomly perturbed Shepp–Logan CT phantoms; mask = body (tissue).
* `sample_image` — scikit-image's shipped sample images (``'camera'``, ``'phantom'``, …).
* `train_test_split` — deterministic (or keyed) split of a `Dataset`.
"""

from models.data.dataset import Dataset, train_test_split
from models.data.scenes import synthetic_scenes
from models.data.shepp_logan import SHEPP_LOGAN, phantoms
from models.data.skimage_samples import SAMPLE_IMAGES, sample_image
from models.data.sklearn_digits import DIGITS_THRESHOLD, NUM_DIGITS, digits

__all__ = [
    "DIGITS_THRESHOLD",
    "NUM_DIGITS",
    "SAMPLE_IMAGES",
    "SHEPP_LOGAN",
    "Dataset",
    "digits",
    "phantoms",
    "sample_image",
    "synthetic_scenes",
    "train_test_split",
]
