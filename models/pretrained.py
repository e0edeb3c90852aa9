"""Pretrained networks that ship inside PyPI wheels (nothing is downloaded at run time).

The PP-OCRv4 text detector of ``rapidocr-onnxruntime`` (a dev dependency): a MobileNet-style
backbone, an FPN neck and a head with transposed convolutions whose final Sigmoid gives a
per-pixel text probability. :func:`text_detector` imports it with :func:`models.from_onnx` and
names the value that Sigmoid reads: the logit map, the target to invert (a saturated sigmoid
has an exactly zero gradient).
"""

from __future__ import annotations

import importlib
import os

from models.imported import ImportedModel, from_onnx

TEXT_DETECTOR = ("rapidocr_onnxruntime", ("models", "ch_PP-OCRv4_det_infer.onnx"))


def text_detector_path() -> str:
    """Path of the detector's ONNX file inside the installed wheel."""
    package = importlib.import_module(TEXT_DETECTOR[0])
    return os.path.join(os.path.dirname(package.__file__), *TEXT_DETECTOR[1])


def logits_name(model: ImportedModel) -> str:
    """The value the graph's final Sigmoid reads (its logits)."""
    graph = model.reference.model.graph
    sigmoids = [node for node in graph.node if node.op_type == "Sigmoid"]
    if not sigmoids:
        raise ValueError("the network has no Sigmoid node")
    return sigmoids[-1].input[0]


def text_detector(*, layout: str = "NHWC") -> tuple[ImportedModel, str]:
    """``(model, logits)``: the detector as an :class:`ImportedModel` and its logits' name."""
    model = from_onnx(text_detector_path(), layout=layout)
    return model, logits_name(model)
