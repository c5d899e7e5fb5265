"""Our presets as backbones of MONAI's ``FlexibleUNet``, registered when this module is imported.

Names: every preset is registered as ``resnext3d_<preset>`` (always ours, whatever MONAI
registers), and also under its bare name where MONAI has no backbone of that name. MONAI's own
``resnet18``…``resnet152`` (MedicalNet ResNets) keep their names, so ours are
``resnext3d_resnet50`` etc., while ``FlexibleUNet(backbone="resnext50_32x4d", ...)`` builds ours.

FlexibleUNet's decoder upsamples by 2 at every stage and expects the first feature map at
stride 2, which is what the presets' stem gives: feature maps at strides 2, 4, 8, 16 and 32,
so the output has the input's size. Inputs must be multiples of 32 along every axis; MONAI's
``is_pad`` only mends encoders that round sizes down, and ours (like MONAI's ResNets) round up,
so the encoder raises a clear ValueError for any other size instead of a size-mismatch error deep
in the decoder.
"""

from __future__ import annotations

import os

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from resnext3d.models.decoder import check_divisible
from resnext3d.models.presets import PRESETS, TEMPLATE, architecture, geometry
from resnext3d.models.resnext import BLOCKS, ResNeXt, ResNeXtFeatures
from resnext3d.models.weights import load_pretrained

NAME_PREFIX = "resnext3d_"
# FlexibleUNet's decoder has one 2× upsampling per feature map after the first.
FLEXIBLE_UNET_STRIDES = (2, 4, 8, 16, 32)


class ResNeXtFlexibleUNetEncoder(ResNeXtFeatures, BaseEncoder):
    """A preset's encoder, as FlexibleUNet builds a backbone.

    Args:
        preset: the preset's name in :data:`resnext3d.models.PRESETS`.
        spatial_dims: 2 or 3.
        in_channels: input channels.
        pretrained: ``False``, or the path of a checkpoint to load with
            :func:`resnext3d.load_pretrained` (2D weights are inflated). There are no weights to
            download, so ``True`` raises a ValueError.
    """

    # Registered backbone name -> preset, filled in below before registration.
    backbone_presets: dict[str, str] = {}

    def __init__(
        self,
        preset: str,
        spatial_dims: int = 3,
        in_channels: int = 1,
        pretrained: bool | str | os.PathLike = False,
    ) -> None:
        if pretrained is True:
            raise ValueError(
                "resnext3d backbones have no weights to download: pass pretrained=<checkpoint "
                "path>, or load one later with resnext3d.load_pretrained(model.encoder, path)"
            )
        super().__init__(preset, spatial_dims=spatial_dims, in_channels=in_channels)
        if self.feature_info.reduction() != list(FLEXIBLE_UNET_STRIDES):
            raise ValueError(
                f"preset {preset!r} gives feature maps at strides {self.feature_info.reduction()}, "
                f"but FlexibleUNet's decoder needs {list(FLEXIBLE_UNET_STRIDES)}"
            )
        if pretrained:
            load_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_divisible(x.shape[2:], self.feature_info.strides()[-1])
        return super().forward(x)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(cls.backbone_presets)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        # FlexibleUNet overwrites spatial_dims, in_channels and pretrained with its own arguments.
        return [
            {"preset": preset, "spatial_dims": 3, "in_channels": 1, "pretrained": False}
            for preset in cls.backbone_presets.values()
        ]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [_feature_channels(preset) for preset in cls.backbone_presets.values()]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(FLEXIBLE_UNET_STRIDES)] * len(cls.backbone_presets)


def _feature_channels(preset: str) -> tuple[int, ...]:
    """The channels of a preset's feature maps, read from its configuration: building networks
    here, even on the meta device, would add seconds to ``import resnext3d``."""
    config = architecture(preset)
    expansion = BLOCKS[config["block"]].expansion
    return (config["stem_width"], *(planes * expansion for planes in config["channels"]))


def _backbone_presets(registered: dict[str, dict]) -> dict[str, str]:
    """Each name to register -> its preset: the prefixed name always, the bare one if free.
    Presets with other strides than the template's (a weight family's, e.g. MedicalNet's stride-8
    features) do not give the feature maps FlexibleUNet's decoder needs, and are left out."""
    names = {}
    template_geometry = geometry(TEMPLATE, spatial_dims=3)
    for preset in PRESETS:
        if geometry(architecture(preset), spatial_dims=3) != template_geometry:
            continue
        names[NAME_PREFIX + preset] = preset
        owner = registered.get(preset, {}).get("type")
        if owner is None or issubclass(owner, ResNeXt):
            names[preset] = preset
    return names


ResNeXtFlexibleUNetEncoder.backbone_presets = _backbone_presets(FLEXUNET_BACKBONE.register_dict)
FLEXUNET_BACKBONE.register_class(ResNeXtFlexibleUNetEncoder)
