"""Everything with weights: pure layers, Flax NNX models, data, training, checkpoints."""

from models import data, layers
from models.dense import MLP, Linear
from models.pure import count_parameters, feature_fn, layer_names, split
from models.seed import SEED_UNET_CONFIG, SEED_UNET_PARAMETERS, seed_unet
from models.unet import UNet

__all__ = [
    "MLP",
    "SEED_UNET_CONFIG",
    "SEED_UNET_PARAMETERS",
    "Linear",
    "UNet",
    "count_parameters",
    "data",
    "feature_fn",
    "layer_names",
    "layers",
    "seed_unet",
    "split",
]
