"""The ResNet/ResNeXt encoder family for 2D and 3D inputs."""

# Importing flexible_unet registers the presets as MONAI FlexibleUNet backbones.
from resnext3d.models import flexible_unet  # noqa: F401
from resnext3d.models.complexity import count_macs, count_parameters
from resnext3d.models.decoder import ResNeXtUNet
from resnext3d.models.ensemble import ProbabilityEnsemble
from resnext3d.models.families import FAMILIES
from resnext3d.models.hub import export_weights, from_pretrained, save_pretrained
from resnext3d.models.multitask import (
    GradingResNeXtUNet,
    PlannedGradingResNeXtUNet,
    RegionsAndGrade,
    plan_grading_unet,
)
from resnext3d.models.planning import (
    UNET_PRESETS,
    PlannedResNeXtUNet,
    build_network,
    plan_strides,
    plan_unet,
)
from resnext3d.models.presets import PRESETS
from resnext3d.models.pretrained import PretrainedCfg
from resnext3d.models.registry import create_model, list_models
from resnext3d.models.resnext import BasicBlock, Bottleneck, FeatureInfo, ResNeXt, ResNeXtFeatures
from resnext3d.models.weights import LoadReport, inflate_kernel, load_pretrained, read_state_dict

__all__ = [
    "FAMILIES",
    "PRESETS",
    "UNET_PRESETS",
    "BasicBlock",
    "Bottleneck",
    "FeatureInfo",
    "LoadReport",
    "GradingResNeXtUNet",
    "PlannedGradingResNeXtUNet",
    "PlannedResNeXtUNet",
    "PretrainedCfg",
    "ProbabilityEnsemble",
    "RegionsAndGrade",
    "ResNeXt",
    "ResNeXtFeatures",
    "ResNeXtUNet",
    "build_network",
    "count_macs",
    "count_parameters",
    "create_model",
    "export_weights",
    "from_pretrained",
    "inflate_kernel",
    "list_models",
    "load_pretrained",
    "plan_grading_unet",
    "plan_strides",
    "plan_unet",
    "read_state_dict",
    "save_pretrained",
]
