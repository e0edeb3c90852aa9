"""models.layer_decoders: decoder sizes scaled to each layer."""

from __future__ import annotations

import doctest

import pytest

from models import layer_decoders
from models.layer_decoders import layer_decoder_arch, train_layer_decoders


def test_doctest():
    result = doctest.testmod(layer_decoders)
    assert result.attempted >= 1 and result.failed == 0


def test_sizes_follow_the_layer():
    assert layer_decoder_arch((32, 32, 16), (32, 32, 1))["upsample"] == 0
    assert layer_decoder_arch((16, 16, 32), (32, 32, 1))["width"] == 32
    assert layer_decoder_arch((32, 32, 1), (32, 32, 1))["width"] == 16  # floored at min_width
    assert layer_decoder_arch((4, 4, 128), (16, 16, 3))["upsample"] == 2


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="pooled by a power of two"):
        layer_decoder_arch((12, 12, 8), (32, 32, 1))
    with pytest.raises(ValueError, match="images must be a non-empty"):
        train_layer_decoders(None, ["enc1"], [[1.0]], steps=1, model_key={})
