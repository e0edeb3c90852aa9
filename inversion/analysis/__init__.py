"""Information-loss analysis: where a network's input cannot be recovered from its output.

* :mod:`~inversion.analysis.relu`: preimage of a ReLU layer (dimension, boundedness,
  inverse Lipschitz constant, local injectivity);
  :mod:`~inversion.analysis.relu_distance`: projection and distance of a reconstruction to
  it, and the split of a reconstruction error into optimiser and network parts.
* :mod:`~inversion.analysis.pooling`: rank, switches and preimages of max / average pooling.
* :mod:`~inversion.analysis.conv_spectrum`: singular values and pseudo-inverse of a
  multi-channel convolution through the FFT.
* :mod:`~inversion.analysis.certificate`: :func:`certify`, the float64 local invertibility
  certificate (exact nullity, nullity at working precision or any tolerance, sigma_min,
  condition number, null space, input-error bound) that every rank statement comes from.
* :mod:`~inversion.analysis.condition`: :func:`inverse_condition`, the relative condition
  number of an invertible map's inverse, ``‖y‖ / (σ_min ‖x‖)``, from the certificate.
* :mod:`~inversion.analysis.jacobian`: singular values, rank, nullity and log-volume of the
  Jacobian of any ``fn(x)`` (dense or matrix-free Lanczos).
* :mod:`~inversion.analysis.layer_analysis`: :func:`layerwise`, every named layer of a network
  certified at three precisions, inverted (one batched engine call) and classified.
"""

from inversion.analysis.certificate import (
    PRECISIONS,
    RTOL_8BIT,
    Certificate,
    certify,
    certify_batch,
    nullities,
    summarize,
)
from inversion.analysis.condition import inverse_condition
from inversion.analysis.conv_spectrum import (
    ConvSpectrum,
    circular_conv2d,
    circular_conv2d_pinv,
    conv_singular_values,
    conv_singular_values_dense,
    conv_spectrum,
    conv_transfer_matrices,
)
from inversion.analysis.jacobian import (
    JacobianSpectrum,
    dense_jacobian,
    jacobian_spectrum,
    layerwise_spectra,
    summarize_spectrum,
)
from inversion.analysis.layer_analysis import (
    CLASSES,
    LayerReport,
    LayerwiseReport,
    layer_selector_loss,
    layer_shapes,
    layerwise,
)
from inversion.analysis.pooling import (
    PoolingLoss,
    avg_unpool,
    max_pool_with_switches,
    max_unpool,
    pooling_loss,
    project_to_max_pool_preimage,
)
from inversion.analysis.relu import ReluPreimage, locally_injective, relu_preimage
from inversion.analysis.relu_distance import (
    ErrorSplit,
    distance_to_preimage,
    preimage_error_split,
    project_to_preimage,
)

__all__ = [
    "PRECISIONS",
    "RTOL_8BIT",
    "Certificate",
    "certify",
    "certify_batch",
    "nullities",
    "summarize",
    "CLASSES",
    "LayerReport",
    "LayerwiseReport",
    "layer_selector_loss",
    "layer_shapes",
    "layerwise",
    "ConvSpectrum",
    "ErrorSplit",
    "JacobianSpectrum",
    "PoolingLoss",
    "ReluPreimage",
    "avg_unpool",
    "circular_conv2d",
    "circular_conv2d_pinv",
    "conv_singular_values",
    "conv_singular_values_dense",
    "conv_spectrum",
    "conv_transfer_matrices",
    "dense_jacobian",
    "inverse_condition",
    "distance_to_preimage",
    "jacobian_spectrum",
    "layerwise_spectra",
    "locally_injective",
    "max_pool_with_switches",
    "max_unpool",
    "pooling_loss",
    "preimage_error_split",
    "project_to_max_pool_preimage",
    "project_to_preimage",
    "relu_preimage",
    "summarize_spectrum",
]
