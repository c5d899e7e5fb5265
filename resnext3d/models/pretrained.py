"""What a network's weights expect of their input, in the manner of timm's ``pretrained_cfg``,
for volumes: the input's channels and size, its voxel spacing and orientation, which modality
each channel is and how intensities are normalised, and which modules are the first convolution
and the classifier (to adapt to other channels, or replace for other classes).

Every :class:`~resnext3d.models.ResNeXt` carries ``pretrained_cfg``, the default for its
architecture: a 3D network takes the BraTS classification data (the 4 modalities in the data's
order, 64³ voxels of 2 mm, each channel z-scored over the brain), a 2D one ImageNet's images.
A run's checkpoints record the configuration filled from the data it trained on
(:class:`~resnext3d.tasks.base.VolumeTask`), and a folder written by
:func:`resnext3d.models.save_pretrained` keeps it beside the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

# The order of the BraTS data modules' channels (resnext3d.data.MODALITIES): the data package
# imports MONAI's transforms, which the networks do without.
BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How intensities are normalised before the network sees them, per channel:
# - "zscore_nonzero": (x - mean) / std of the channel's nonzero voxels, each volume its own,
#   zero left zero (skull-stripped MRI is exactly 0 outside the brain): MONAI's
#   NormalizeIntensity(nonzero=True, channel_wise=True), as the BraTS data modules do;
# - "zscore": the same over every voxel of the volume;
# - "mean_std": intensities scaled to [0, 1], then (x - mean) / std with the fixed ``mean`` and
#   ``std`` of the dataset the weights were trained on (ImageNet, Kinetics);
# - "none": raw intensities (e.g. CT in Hounsfield units).
Normalization = Literal["zscore_nonzero", "zscore", "mean_std", "none"]


@dataclass
class PretrainedCfg:
    """What a network's weights expect of their input, and where they come from.

    Attributes:
        architecture: the preset the network was built from, if any.
        tag: which weights of the architecture, e.g. ``"brats2021_grade"``.
        spatial_dims: 2 (images) or 3 (volumes).
        input_size: ``(channels, *spatial)`` of one input, spatial axes in the array's order
            (C, D, H, W in PyTorch's words; the BraTS data's are the RAS axes): the size the
            weights were trained at.
        input_multiple: each spatial size must be a multiple of this (a UNet's total stride);
            None where any size works.
        spacing: the voxel size, in mm, along the spatial axes; None for images.
        orientation: the axis codes the volumes were reoriented to, e.g. ``"RAS"``.
        modalities: what each input channel is, e.g. the BraTS MRI sequences.
        normalization: how each channel's intensities are normalised (:data:`Normalization`).
        mean, std: per channel, for ``normalization="mean_std"``.
        num_classes: outputs of the classifier or segmentation head (0: none).
        label_names: the name of each output, in order.
        first_conv: the name of the first convolution (its input channels are adapted when
            loading into a network with other ones).
        classifier: the name of the classifier or head (left at its initialisation when loading
            into a network with another number of classes); None for an encoder.
        source: where the weights come from: a run's checkpoint, a URL, a file.
        family: who trained them, e.g. ``"resnext3d"``, ``"medicalnet"``, ``"torchvision"``.
        license: the weights' licence, where known.
        paper: the paper the weights or the architecture come from.
        notes: anything else a user must know to feed data like the training data.
    """

    architecture: str | None = None
    tag: str | None = None
    spatial_dims: int = 3
    input_size: tuple[int, ...] = (len(BRATS_MODALITIES), 64, 64, 64)
    input_multiple: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = (2.0, 2.0, 2.0)
    orientation: str | None = "RAS"
    modalities: tuple[str, ...] | None = BRATS_MODALITIES
    normalization: Normalization = "zscore_nonzero"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int = 0
    label_names: tuple[str, ...] | None = None
    first_conv: str | None = "conv1"
    classifier: str | None = "fc"
    source: str | None = None
    family: str | None = None
    license: str | None = None
    paper: str | None = None
    notes: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "pretrained_cfg") -> PretrainedCfg:
        """The configuration a :meth:`to_dict` (or a JSON file's copy of it) holds; ``where``
        names the source in the error for fields it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown pretrained_cfg fields {unknown}; known: {sorted(known)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# The paper of the architecture every preset follows.
RESNEXT_PAPER = "Xie et al. 2017, Aggregated Residual Transformations for Deep Neural Networks"

# The input of the published weights' families (resnext3d.models.families), by the prefix of the
# names of the presets that build their architectures: what their training fed the networks.
# Channel-specific fields (modalities, mean, std) hold only for the family's channel count.
VIDEO_CLIP = dict(
    input_size=(3, 16, 112, 112),  # RGB, 16 frames (time first) of 112×112
    spacing=None,
    orientation=None,
    modalities=("red", "green", "blue"),
    normalization="mean_std",
)
FAMILY_INPUTS: dict[str, dict[str, Any]] = {
    "medicalnet_": dict(
        family="medicalnet",
        input_size=(1, 56, 448, 448),
        spacing=None,
        orientation=None,
        modalities=("ct_or_mri",),
        normalization="zscore_nonzero",
        source="https://github.com/Tencent/MedicalNet",
        license="MIT",
        paper="Chen et al. 2019, Med3D: Transfer Learning for 3D Medical Image Analysis",
        notes="Volumes resized (nearest) to 56×448×448, D×H×W, whatever their spacing; one "
        "channel z-scored over its nonzero voxels, the zeros then filled with N(0, 1) noise.",
    ),
    "kinetics_": dict(
        family="kinetics",
        **VIDEO_CLIP,
        mean=(0.4345, 0.4051, 0.3775),
        std=(0.2768, 0.2713, 0.2737),
        source="https://github.com/kenshohara/3D-ResNets-PyTorch",
        license="MIT",
        paper="Hara et al. 2018, Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and "
        "ImageNet?",
        notes="Frames scaled to [0, 1], then Kinetics' mean and std (3D-ResNets-PyTorch's "
        "mean.py, with which its 2020 r3d*_K_200ep weights were trained; the 2018 "
        "resnext-101-kinetics.pth predates that code).",
    ),
    "r3d_18": dict(
        family="torchvision_video",
        **VIDEO_CLIP,
        mean=(0.43216, 0.394666, 0.37645),
        std=(0.22803, 0.22145, 0.216989),
        source="torchvision.models.video.R3D_18_Weights.KINETICS400_V1",
        license="BSD-3-Clause (torchvision)",
        paper="Tran et al. 2018, A Closer Look at Spatiotemporal Convolutions for Action "
        "Recognition",
        notes="Frames resized to 128×171, centre-cropped to 112×112, scaled to [0, 1], then "
        "the mean and std (torchvision's VideoClassification transforms).",
    ),
}


def default_pretrained_cfg(network: nn.Module, preset: str | None = None) -> PretrainedCfg:
    """The configuration of a freshly built ResNeXt (classifier or encoder): its channels,
    first convolution and classifier from the network; its input as this project trains the
    presets, the BraTS grade classification's 64³ crops of 2 mm for a 3D network
    (``experiments/brats_cls.yaml``), ImageNet's 224² images for a 2D one; for the presets of a
    published family's architecture, the input its weights were trained on
    (:data:`FAMILY_INPUTS`)."""
    in_channels, num_classes = network.in_channels, network.num_classes
    common = dict(
        architecture=preset,
        spatial_dims=network.spatial_dims,
        num_classes=num_classes,
        first_conv=network.first_conv,
        classifier="fc" if num_classes > 0 else None,
        paper=RESNEXT_PAPER,
    )
    if network.spatial_dims == 2:
        rgb = in_channels == len(IMAGENET_MEAN)
        return PretrainedCfg(
            input_size=(in_channels, 224, 224),
            spacing=None,
            orientation=None,
            modalities=("red", "green", "blue") if rgb else None,
            normalization="mean_std" if rgb else "zscore",
            mean=IMAGENET_MEAN if rgb else None,
            std=IMAGENET_STD if rgb else None,
            **common,
        )
    family = next(
        (inputs for prefix, inputs in FAMILY_INPUTS.items() if (preset or "").startswith(prefix)),
        None,
    )
    if family is not None:
        cfg = PretrainedCfg(**{**common, **family})
        cfg.input_size = (in_channels, *cfg.input_size[1:])
        if in_channels != family["input_size"][0]:
            cfg.modalities = cfg.mean = cfg.std = None
        return cfg
    brats = in_channels == len(BRATS_MODALITIES)
    return PretrainedCfg(
        input_size=(in_channels, 64, 64, 64),
        modalities=BRATS_MODALITIES if brats else None,
        **common,
    )


def pretrained_cfg_of(network: nn.Module) -> PretrainedCfg | None:
    """The configuration of any network: its own ``pretrained_cfg``; for a UNet on a ResNeXt
    encoder (:class:`~resnext3d.models.ResNeXtUNet`) the encoder's, with the UNet's head and
    the input multiple its strides need; None for a network that says nothing of its input."""
    own = getattr(network, "pretrained_cfg", None)
    if isinstance(own, PretrainedCfg):
        return dataclasses.replace(own)
    encoder_cfg = getattr(getattr(network, "encoder", None), "pretrained_cfg", None)
    if not isinstance(encoder_cfg, PretrainedCfg):
        return None
    total_stride = getattr(network, "total_stride", None)
    return dataclasses.replace(
        encoder_cfg,
        input_multiple=tuple(total_stride) if total_stride is not None else None,
        num_classes=getattr(network, "out_channels", 0),
        first_conv=f"encoder.{encoder_cfg.first_conv}" if encoder_cfg.first_conv else None,
        classifier="head",
    )


def pretrained_cfg_for_data(cfg: PretrainedCfg | None, data: object) -> PretrainedCfg:
    """``cfg`` with what a data module (or anything with its attributes) says of its input:
    ``in_channels`` and ``roi_size`` (the input size), ``spacing``, ``modalities``,
    ``class_names`` and ``num_classes``; what it does not say stays ``cfg``'s."""
    # A network that says nothing of itself: no module names, only what the data says.
    cfg = cfg if cfg is not None else PretrainedCfg(first_conv=None, classifier=None)
    cfg = dataclasses.replace(cfg)
    in_channels = getattr(data, "in_channels", None) or cfg.input_size[0]
    roi_size = getattr(data, "roi_size", None)
    spatial = tuple(roi_size) if roi_size is not None else cfg.input_size[1:]
    cfg.input_size = (in_channels, *spatial)
    spacing = getattr(data, "spacing", None)
    if spacing is not None:
        cfg.spacing = tuple(float(s) for s in spacing)
    modalities = getattr(data, "modalities", None)
    if modalities is not None:
        cfg.modalities = tuple(modalities)
    elif in_channels != len(cfg.modalities or ()):
        cfg.modalities = None  # the default's modalities name other channels
    class_names = getattr(data, "class_names", None)
    if class_names is not None:
        cfg.label_names = tuple(class_names)
    num_classes = getattr(data, "num_classes", None)
    if num_classes is not None:
        cfg.num_classes = num_classes
    return cfg
