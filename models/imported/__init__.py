"""Networks from other frameworks (PyTorch modules, ONNX files) as pure JAX models.

``from_torch`` needs the ``torch`` extra and ``from_onnx`` the ``onnx`` extra; both are imported
only when called, so ``import models`` needs neither.
"""

from models.imported.conformance import Conformance, DtypeConformance, conformance
from models.imported.model import ImportedModel


def from_torch(module, example_input, *, layout: str = "NHWC") -> ImportedModel:
    """A ``torch.nn.Module`` as an :class:`ImportedModel` (see :mod:`models.imported.torch_import`)."""
    from models.imported.torch_import import from_torch as _from_torch

    return _from_torch(module, example_input, layout=layout)


def from_onnx(path_or_model, *, layout: str = "NHWC", input_shape=None) -> ImportedModel:
    """An ONNX file or ``ModelProto`` as an :class:`ImportedModel` (see
    :mod:`models.imported.onnx_import`)."""
    from models.imported.onnx_import import from_onnx as _from_onnx

    return _from_onnx(path_or_model, layout=layout, input_shape=input_shape)


__all__ = [
    "Conformance",
    "DtypeConformance",
    "ImportedModel",
    "conformance",
    "from_onnx",
    "from_torch",
]
