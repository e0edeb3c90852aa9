"""Everything with weights: pure layers, Flax NNX models, data, training, checkpoints."""

from models import data, layers, pretrained, probes
from models.cache import cached_train
from models.checkpoint import CheckpointError, restore_model, save_model
from models.decoder import Decoder
from models.dense import MLP, Linear
from models.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Bijector,
    Chain,
    Conv1x1,
    Flow,
    Glow,
    HaarDownsampling,
    InvertibleUNet,
    IResNet,
    IResNetBlock,
    IRevNet,
    Squeeze,
)
from models.imported import (
    Conformance,
    ImportedModel,
    conformance,
    from_onnx,
    from_torch,
)
from models.layer_fns import activations_fn
from models.losses import dice, inverse_gain, iou, segmentation_loss
from models.probes import ProbeParams, evaluate_probe, probe_predict, train_probe
from models.pure import (
    activations,
    count_parameters,
    feature_fn,
    jitted,
    layer_names,
    per_example,
    split,
)
from models.seed import SEED_UNET_CONFIG, SEED_UNET_PARAMETERS, seed_unet
from models.training import TrainConfig, TrainResult, evaluate, train
from models.unet import UNet

__all__ = [
    "MLP",
    "SEED_UNET_CONFIG",
    "SEED_UNET_PARAMETERS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Bijector",
    "Chain",
    "Conformance",
    "Conv1x1",
    "CheckpointError",
    "Decoder",
    "Flow",
    "Glow",
    "HaarDownsampling",
    "IResNet",
    "ImportedModel",
    "IResNetBlock",
    "IRevNet",
    "InvertibleUNet",
    "Linear",
    "ProbeParams",
    "Squeeze",
    "TrainConfig",
    "TrainResult",
    "UNet",
    "activations",
    "activations_fn",
    "cached_train",
    "conformance",
    "count_parameters",
    "data",
    "dice",
    "evaluate",
    "evaluate_probe",
    "feature_fn",
    "from_onnx",
    "from_torch",
    "inverse_gain",
    "iou",
    "jitted",
    "layer_names",
    "layers",
    "per_example",
    "probe_predict",
    "pretrained",
    "probes",
    "restore_model",
    "save_model",
    "seed_unet",
    "segmentation_loss",
    "split",
    "train",
    "train_probe",
]
