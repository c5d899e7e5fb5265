"""The ResNet/ResNeXt encoder family for 2D and 3D inputs."""

from resnext3d.models.complexity import count_macs, count_parameters
from resnext3d.models.registry import PRESETS, create_model, list_models
from resnext3d.models.resnext import BasicBlock, Bottleneck, FeatureInfo, ResNeXt
from resnext3d.models.weights import inflate_kernel, load_pretrained, read_state_dict

__all__ = [
    "PRESETS",
    "BasicBlock",
    "Bottleneck",
    "FeatureInfo",
    "ResNeXt",
    "count_macs",
    "count_parameters",
    "create_model",
    "inflate_kernel",
    "list_models",
    "load_pretrained",
    "read_state_dict",
]
