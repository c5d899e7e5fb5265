"""The families of published 3D ResNet weights, and how their key names map onto ours.

Each :class:`WeightFamily` says where its weights come from, which keys only its state dicts
have (to tell it from the keys), how its key names become ours, which keys are its head (left
out when the model's differs) and which preset builds its architecture (to check the strides
and dilations, which weights do not show):

- ``medicalnet``: Tencent/MedicalNet (Chen et al. 2019, "Med3D"), ResNet-10 … -200 trained on
  23 medical segmentation data sets (``resnet_50_23dataset.pth``…): our key names, a
  ``conv_seg`` segmentation head; presets ``medicalnet_resnet*``.
- ``kinetics``: kenshohara/3D-ResNets-PyTorch (Hara et al. 2018), ResNets (``r3d50_K_200ep.pth``
  …) and ResNeXt-101 (``resnext-101-kinetics.pth``) trained on Kinetics: our key names, an
  ``fc`` head; presets ``kinetics_resnet*``, ``kinetics_resnext101_32x4d``.
- ``torchvision_video``: torchvision's ``r3d_18`` (Tran et al. 2018, Kinetics-400): a ``stem``
  sequential, each block's convolution and norm a sequential (``conv1.0``, ``conv1.1``);
  preset ``r3d_18``.
- ``resnext3d``: ours, which are also torchvision's and timm's 2D names.

MedicalNet's and 3D-ResNets-PyTorch's key names are ours, so the keys tell them apart only by
MedicalNet's head: without one, the family is the one whose presets have the model's geometry,
else ``resnext3d``. Naming the family explicitly also checks the model's geometry against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from resnext3d.models.presets import PRESETS, architecture, geometry

AUTO = "auto"


@dataclass(frozen=True)
class WeightFamily:
    """One family of weights.

    Attributes:
        name: the family's name, as ``weights_family`` takes it.
        source: who publishes the weights, and their file names.
        heads: key prefixes of the family's classifier or segmentation head, in our names.
        marker: a key prefix that only this family's state dicts have; None if the keys cannot
            tell it from others.
        preset_prefix: the prefix of the names of the presets that build the family's
            architecture, which share its strides and dilations; None for any architecture.
        renames: regular expressions and replacements turning the family's key names into ours,
            applied in order.
    """

    name: str
    source: str
    heads: tuple[str, ...] = ("fc.",)
    marker: str | None = None
    preset_prefix: str | None = None
    renames: tuple[tuple[str, str], ...] = ()

    def rename(self, key: str) -> str:
        """The family's key name in ours."""
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def presets(self) -> list[str]:
        """The presets that build this family's architecture."""
        if self.preset_prefix is None:
            return []
        return [name for name in PRESETS if name.startswith(self.preset_prefix)]

    def geometry_differences(self, model: nn.Module) -> list[str]:
        """How the model's strides and dilations differ from those the weights were trained
        with (none for a family of any geometry, or a model that does not say its own)."""
        built = getattr(model, "geometry", None)
        if not self.presets() or built is None:
            return []
        if model.spatial_dims != 3:
            return [f"{model.spatial_dims}D where {self.name}'s weights are 3D"]
        expected = geometry(architecture(self.presets()[0]), spatial_dims=3)
        return [
            f"{name} {built[name]} where {self.name}'s weights were trained with {value}"
            for name, value in expected.items()
            if built[name] != value
        ]


FAMILIES: dict[str, WeightFamily] = {
    family.name: family
    for family in (
        WeightFamily(
            name="torchvision_video",
            source="torchvision.models.video.r3d_18 (r3d_18-b3b3357e.pth, Kinetics-400)",
            marker="stem.0.",
            preset_prefix="r3d_",
            renames=(
                (r"^stem\.0\.", "conv1."),
                (r"^stem\.1\.", "bn1."),
                (r"\.conv([12])\.0\.", r".conv\1."),
                (r"\.conv([12])\.1\.", r".bn\1."),
            ),
        ),
        WeightFamily(
            name="medicalnet",
            source="Tencent/MedicalNet (resnet_{10,18,34,50}_23dataset.pth, resnet_{10…200}.pth)",
            heads=("conv_seg.", "fc."),
            marker="conv_seg.",
            preset_prefix="medicalnet_",
        ),
        WeightFamily(
            name="kinetics",
            source="kenshohara/3D-ResNets-PyTorch (r3d{18…200}_K_200ep.pth, "
            "resnext-101-kinetics.pth)",
            preset_prefix="kinetics_",
        ),
        WeightFamily(name="resnext3d", source="resnext3d, torchvision and timm (2D or 3D)"),
    )
}


def detect_family(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[WeightFamily, str]:
    """The family of a state dict (module docstring), and what told it: a key only it has,
    else, for 3D weights, the model's geometry, else ours."""
    for family in FAMILIES.values():
        if family.marker and any(key.startswith(family.marker) for key in state_dict):
            return family, f"detected from its {family.marker}* keys"
    if hasattr(model, "geometry") and any(value.ndim == 5 for value in state_dict.values()):
        for family in FAMILIES.values():
            if family.presets() and not family.geometry_differences(model):
                return family, "detected from the model's geometry"
    return FAMILIES["resnext3d"], "neither another family's keys nor its geometry"


def resolve_family(
    name: str, state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[WeightFamily, str]:
    """The family ``name`` says (``"auto"``: detected), and how it was chosen."""
    if name == AUTO:
        return detect_family(state_dict, model)
    if name not in FAMILIES:
        raise ValueError(
            f"unknown weights family {name!r}; known: {', '.join(FAMILIES)}, or {AUTO!r}"
        )
    return FAMILIES[name], "given"
