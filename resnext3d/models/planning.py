"""A ResNeXt UNet planned for its patch, as nnU-Net plans its residual-encoder UNet.

nnU-Net (Isensee et al. 2021; the residual encoders of Isensee et al. 2024) derives the network
from the patch size and the voxel spacing instead of fixing it: a first stage at full resolution,
then a stride-2 downsampling per stage along every axis that still has at least twice the
smallest feature map (4 voxels) and whose spacing is less than twice the finest one, so thick
slices keep their resolution until the in-plane axes catch up; channels start at 32 and double
per stage up to 320; more residual blocks in the deeper stages. Here every block is a grouped
bottleneck: its 3×3 convolution is split into ``cardinality`` groups, the ResNeXt form of
nnU-Net's encoder.

Planning happens once: :func:`plan_unet` turns a preset, a patch and a spacing into a plan, the
``class_path`` and ``init_args`` of a plain :class:`ResNeXtUNet` on a :class:`ResNeXtFeatures`
encoder with every stage's depth, width and stride written out (nnU-Net's ``plans.json`` holds
``network_class_name`` and ``arch_kwargs`` alike), and :func:`build_network` builds it. A run's
config names :class:`PlannedResNeXtUNet`, the request; the CLI writes the plan in its place, so
the run's ``config.yaml`` records the network itself, which a run evaluated or resumed with
another crop size, or a later change of the presets, leaves as it is.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from resnext3d.models.decoder import ResNeXtUNet
from resnext3d.models.presets import lookup_preset
from resnext3d.models.resnext import Bottleneck, LayerSpec

MIN_FEATURE_SIZE = 4  # nnU-Net stops downsampling an axis before its map falls below this
FIRST_WIDTH = 32
MAX_WIDTH = 320

# Blocks per stage (the encoder's `layers`, truncated to the planned number of stages), C, and the
# width of each group in the first stage (it doubles with the channels, as in ResNeXt). The block
# counts are nnU-Net's residual encoders': M's, and half of them for S.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "resnext_unet_s": dict(layers=(1, 2, 2, 3, 3, 3, 3), cardinality=8, group_width=4),
    "resnext_unet_m": dict(layers=(1, 3, 4, 6, 6, 6, 6), cardinality=8, group_width=4),
    "resnext_unet_m_16x2d": dict(layers=(1, 3, 4, 6, 6, 6, 6), cardinality=16, group_width=2),
}
UNET_CLASS_PATH = "resnext3d.ResNeXtUNet"
ENCODER_CLASS_PATH = "resnext3d.ResNeXtFeatures"
INSTANCE_NORM: LayerSpec = ("instance", {"affine": True})
LEAKY_RELU: LayerSpec = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


def plan_strides(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    min_feature_size: int = MIN_FEATURE_SIZE,
    max_downsamplings: int = 6,
) -> list[tuple[int, ...]]:
    """The stride of each downsampling, one value per axis, as nnU-Net plans them.

    An axis is halved while its map keeps ``min_feature_size`` voxels or more, its size is even
    (so that the patch stays a multiple of the total stride) and its spacing is less than twice
    the finest current spacing: ``(128, 128, 128)`` at 1 mm gives five 2×2×2
    strides (128 -> 4); ``(32, 256, 256)`` at (5, 0.8, 0.8) mm halves only the in-plane axes until
    their spacing reaches the slices'.
    """
    if len(patch_size) != len(spacing):
        raise ValueError(
            f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} need one entry per axis"
        )
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    size, current = list(patch_size), [float(s) for s in spacing]
    strides: list[tuple[int, ...]] = []
    while len(strides) < max_downsamplings:
        finest = min(current)
        stride = tuple(
            2
            if size[axis] >= 2 * min_feature_size
            and size[axis] % 2 == 0
            and current[axis] < 2 * finest
            else 1
            for axis in range(len(size))
        )
        if all(s == 1 for s in stride):
            break
        size = [n // s for n, s in zip(size, stride, strict=True)]
        current = [c * s for c, s in zip(current, stride, strict=True)]
        strides.append(stride)
    return strides


def plan_unet(
    preset: str = "resnext_unet_m",
    patch_size: Sequence[int] = (128, 128, 128),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    in_channels: int = 4,
    out_channels: int = 3,
    layers: Sequence[int] | None = None,
    cardinality: int | None = None,
    group_width: int | None = None,
    first_width: int | None = None,
    max_downsamplings: int = 6,
    decoder_block: Literal["conv", "bottleneck"] = "bottleneck",
    deep_supervision: bool = False,
    deep_supervision_heads: int = 2,
    norm: LayerSpec = INSTANCE_NORM,
    act: LayerSpec = LEAKY_RELU,
    drop_path_rate: float = 0.0,
    blocks: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The plan of a ResNeXt UNet for ``patch_size`` at ``spacing``: ``{"class_path",
    "init_args"}`` of a :class:`ResNeXtUNet` whose ``encoder`` is a :class:`ResNeXtFeatures`
    with its depths, widths and strides written out, in JSON's types (a config's, a
    ``plans.json``'s). :func:`build_network` builds it.

    The stem is one 3×3 convolution at full resolution (no max-pool), followed by a stage of
    grouped bottlenecks at stride 1 and one stage per planned downsampling (:func:`plan_strides`);
    stage outputs have 32, 64, 128… channels, at most 320; each decoder stage has its skip's
    width. Norms are instance norms with learnt scales, activations leaky ReLUs, as in nnU-Net.

    Args:
        preset: a name in :data:`UNET_PRESETS`: blocks per stage, cardinality and group width.
        patch_size: the training crop, in voxels (in a run, the data's roi_size).
        spacing: the voxel size, in mm (in a run, the data's spacing).
        in_channels: input channels, e.g. 4 MRI modalities.
        out_channels: output channels (logits), e.g. 3 regions.
        layers: override the preset's blocks per stage, as the encoder's ``layers``.
        cardinality: override the preset's C.
        group_width: override the preset's width of each group in the first stage. The
            encoder's ``base_width`` (ResNeXt's d) is their width in a stage of 256 channels:
            with the first stage's 32, 8 times this.
        first_width: override the preset's channels of the first stage (32, as nnU-Net's).
        max_downsamplings: at most this many downsamplings, whatever the patch allows.
        decoder_block: as in :class:`ResNeXtUNet`; ``"bottleneck"`` makes the decoder's stages
            grouped bottlenecks too, far cheaper than two 3×3 convolutions on the concatenation.
        deep_supervision, deep_supervision_heads: as in :class:`ResNeXtUNet`.
        norm, act: every layer's, encoder and decoder.
        drop_path_rate: stochastic depth of the encoder's blocks.
        blocks: ``layers``' name in the configs of runs trained before it took the encoder's.
    """
    if blocks is not None and layers is not None:
        raise ValueError(
            f"blocks is the former name of layers: give one, not both (blocks {blocks}, layers "
            f"{layers})"
        )
    chosen = lookup_preset(preset, UNET_PRESETS, "UNet preset")
    layers = tuple(layers or blocks or chosen["layers"])
    cardinality = cardinality or chosen["cardinality"]
    group_width = group_width or chosen["group_width"]
    first_width = first_width or chosen.get("first_width", FIRST_WIDTH)
    spatial_dims = len(patch_size)
    strides = [(1,) * spatial_dims, *plan_strides(patch_size, spacing, MIN_FEATURE_SIZE,
                                                  max_downsamplings)]  # fmt: skip
    if len(layers) < len(strides):
        raise ValueError(
            f"the patch {tuple(patch_size)} at {tuple(spacing)} mm plans {len(strides)} "
            f"stages, but layers gives {len(layers)}: {layers}"
        )
    widths = [min(first_width * 2**stage, MAX_WIDTH) for stage in range(len(strides))]
    planes = [width // Bottleneck.expansion for width in widths]
    norm, act = _as_json(norm), _as_json(act)
    encoder = {
        "preset": None,  # every architecture argument is here
        "layers": list(layers[: len(strides)]),
        "block": "bottleneck",
        "cardinality": cardinality,
        # ResNeXt's d: the first stage's groups are planes * d / 64 channels wide.
        "base_width": group_width * 64 // planes[0],
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "channels": planes,
        "stem_width": widths[0],
        "stem_kernel_size": 3,
        "stem_stride": 1,
        "no_max_pool": True,
        "strides": [list(stride) for stride in strides],
        "norm": norm,
        "act": act,
        "drop_path_rate": drop_path_rate,
        # The stages' maps; the stem's is the first stage's input, not a skip.
        "out_indices": list(range(1, len(strides) + 1)),
    }
    unet = {
        "encoder": {"class_path": ENCODER_CLASS_PATH, "init_args": encoder},
        "out_channels": out_channels,
        "decoder_channels": widths[-2::-1],  # each stage as wide as its skip
        "norm": norm,
        "act": act,
        "upsample": "deconv",
        "decoder_block": decoder_block,
        "deep_supervision": deep_supervision,
        "deep_supervision_heads": deep_supervision_heads,
    }
    return {"class_path": UNET_CLASS_PATH, "init_args": unet}


def build_network(plan: dict[str, Any]) -> nn.Module:
    """The network a plan names (``class_path`` and ``init_args``), the networks among its
    arguments (an encoder) built first."""
    module, _, name = plan["class_path"].rpartition(".")
    arguments = {
        key: build_network(value) if isinstance(value, dict) and "class_path" in value else value
        for key, value in plan.get("init_args", {}).items()
    }
    return getattr(importlib.import_module(module), name)(**arguments)


def _as_json(spec: LayerSpec) -> LayerSpec:
    return spec if isinstance(spec, str) else [spec[0], dict(spec[1])]


class PlannedResNeXtUNet(ResNeXtUNet):
    """The :class:`ResNeXtUNet` that :func:`plan_unet` plans, in one call.

    ``self.plan`` is the plan it was built from. In a run's config this class is the request:
    the CLI links the data's ``roi_size``, ``spacing`` and channels into it, then writes its plan
    in its place, so the run's ``config.yaml`` names the planned :class:`ResNeXtUNet` and its
    encoder, not this class.

    Args:
        As :func:`plan_unet`'s.
    """

    def __init__(
        self,
        preset: str = "resnext_unet_m",
        patch_size: Sequence[int] = (128, 128, 128),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        in_channels: int = 4,
        out_channels: int = 3,
        layers: Sequence[int] | None = None,
        cardinality: int | None = None,
        group_width: int | None = None,
        first_width: int | None = None,
        max_downsamplings: int = 6,
        decoder_block: Literal["conv", "bottleneck"] = "bottleneck",
        deep_supervision: bool = False,
        deep_supervision_heads: int = 2,
        norm: LayerSpec = INSTANCE_NORM,
        act: LayerSpec = LEAKY_RELU,
        drop_path_rate: float = 0.0,
        blocks: Sequence[int] | None = None,
    ) -> None:
        plan = plan_unet(
            preset=preset,
            patch_size=patch_size,
            spacing=spacing,
            in_channels=in_channels,
            out_channels=out_channels,
            layers=layers,
            cardinality=cardinality,
            group_width=group_width,
            first_width=first_width,
            max_downsamplings=max_downsamplings,
            decoder_block=decoder_block,
            deep_supervision=deep_supervision,
            deep_supervision_heads=deep_supervision_heads,
            norm=norm,
            act=act,
            drop_path_rate=drop_path_rate,
            blocks=blocks,
        )
        arguments = dict(plan["init_args"])
        super().__init__(build_network(arguments.pop("encoder")), **arguments)
        self.plan = plan
