"""A UNet whose encoder is a ResNeXt: one decoder stage per skip connection.

The encoder's feature maps (stem at stride 2, stages at 4…32 by default) are the skip
connections. Each decoder stage upsamples by exactly the per-axis stride ratio between two
successive feature maps, so anisotropic encoders (e.g. ``stem_stride=(1, 2, 2)``) decode to the
right shape. Where the shallowest feature map is below full resolution (the classification stem
at stride 2), a last stage upsamples to full resolution with a skip from a light convolution on
the raw input; an encoder with a full-resolution stage (:class:`PlannedResNeXtUNet`) needs none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import UpSample
from monai.networks.layers import get_act_layer
from monai.networks.layers.factories import Conv

from resnext3d.models.construction import records_init_args
from resnext3d.models.resnext import Bottleneck, LayerSpec, ResNeXtFeatures, make_norm


def conv_norm_act(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    norm: LayerSpec,
    act: LayerSpec,
    kernel_size: int = 3,
) -> nn.Sequential:
    """Convolution, norm and activation; no conv bias, which the norm would subtract."""
    conv = Conv[Conv.CONV, spatial_dims]
    return nn.Sequential(
        OrderedDict(
            conv=conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            norm=make_norm(norm, spatial_dims, out_channels),
            act=get_act_layer(act),
        )
    )


class DecoderStage(nn.Module):
    """Upsample by ``scale`` (one factor per axis), concatenate the skip, then either two
    conv-norm-acts (``block="conv"``) or a 1×1 conv-norm-act that merges the two and a grouped
    bottleneck (``block="bottleneck"``: C groups, as wide as the encoder's at this width)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: Sequence[int],
        norm: LayerSpec,
        act: LayerSpec,
        upsample: str,
        block: Literal["conv", "bottleneck"] = "conv",
        cardinality: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        # The upsampling also reduces the channels (transposed convolution, or a 1×1 convolution
        # before interpolating), so the convolutions after it run on the narrow width.
        self.upsample = UpSample(
            spatial_dims, in_channels, out_channels, scale_factor=tuple(scale), mode=upsample
        )
        merged = out_channels + skip_channels
        if block == "conv":
            self.convs = nn.Sequential(
                conv_norm_act(spatial_dims, merged, out_channels, norm, act),
                conv_norm_act(spatial_dims, out_channels, out_channels, norm, act),
            )
        elif block == "bottleneck":
            # At full resolution a 3×3 convolution on the concatenation costs most of a UNet's
            # operations; a 1×1 merge and a grouped bottleneck cost a fraction of it.
            self.convs = nn.Sequential(
                conv_norm_act(spatial_dims, merged, out_channels, norm, act, kernel_size=1),
                Bottleneck(
                    out_channels,
                    out_channels // Bottleneck.expansion,
                    cardinality=cardinality,
                    base_width=base_width,
                    spatial_dims=spatial_dims,
                    norm=norm,
                    act=act,
                ),
            )
        else:
            raise ValueError(f"decoder block must be 'conv' or 'bottleneck', got {block!r}")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


@records_init_args
class ResNeXtUNet(nn.Module):
    """A UNet with a ResNeXt encoder, returning logits at the input's full resolution.

    Args:
        encoder: the :class:`ResNeXtFeatures` whose feature maps are the skips, e.g.
            ``create_model("resnext50_32x4d", in_channels=4, features_only=True)``; the UNet takes
            its input channels and spatial dimensions.
        out_channels: output channels (logits), e.g. 3 for the TC, WT, ET regions.
        decoder_channels: output channels of each decoder stage, deepest first, the last at full
            resolution: one per encoder feature map (5 with the default ``out_indices``), one
            fewer if the shallowest map is at full resolution. None: each stage as wide as its
            skip (nnU-Net's choice), the one on the raw input half the shallowest map's width.
        norm: norm layer of every decoder convolution, by MONAI name (``"instance"``,
            ``"batch"``, ``"group"``…); the encoder has its own.
        act: activation of every decoder convolution, by MONAI name.
        upsample: MONAI ``UpSample`` mode: ``"deconv"`` (transposed convolution),
            ``"nontrainable"`` (1×1 convolution, then linear interpolation) or ``"pixelshuffle"``
            (isotropic strides only).
        input_skip: concatenate a conv-norm-act of the raw input in the full-resolution stage.
            Only for encoders whose shallowest feature map is below full resolution, which
            need that stage; None: wherever there is one.
        decoder_block: ``"conv"``: two 3×3 conv-norm-acts per decoder stage; ``"bottleneck"``: a
            1×1 merge of upsampled and skip, then a grouped bottleneck with the encoder's C and d.
        deep_supervision: in training mode, also return logits from intermediate decoder stages.
        deep_supervision_heads: how many decoder stages before the last get a logit head,
            from the highest resolution down: with the classification stem, 1 is the stage at
            its stride (2), 2 adds the one at stride 4, and so on.

    Output:
        ``(B, out_channels, *spatial)`` logits of the input's spatial size. With
        ``deep_supervision`` in training mode, as MONAI's ``DynUNet`` does, one tensor
        ``(B, 1 + deep_supervision_heads, out_channels, *spatial)``: index 0 along dim 1 is the
        final output, then each head's logits, from high to low resolution, each linearly
        interpolated to the input's size (``torch.unbind(output, dim=1)`` gives the list). In eval
        mode the output is always the final logits alone, ready for ``sliding_window_inference``.

    Input sizes must be multiples of the encoder's total stride along each axis (32 with the
    default strides); any other size raises a ValueError naming the axis and the multiple, rather
    than returning a mask of another size. Pad with ``monai.transforms.DivisiblePad`` where needed.

    ``self.encoder`` is the encoder given, for loading pretrained weights into it (see
    :func:`resnext3d.load_pretrained`).
    """

    def __init__(
        self,
        encoder: ResNeXtFeatures,
        out_channels: int = 3,
        decoder_channels: Sequence[int] | None = (256, 128, 64, 32, 16),
        norm: LayerSpec = "instance",
        act: LayerSpec = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        upsample: str = "deconv",
        input_skip: bool | None = None,
        decoder_block: Literal["conv", "bottleneck"] = "conv",
        deep_supervision: bool = False,
        deep_supervision_heads: int = 2,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, ResNeXtFeatures):
            raise TypeError(
                "the encoder must be a ResNeXtFeatures, e.g. create_model(name, features_only="
                f"True), not a {type(encoder).__name__}"
            )
        self.encoder = encoder
        spatial_dims = encoder.spatial_dims
        feature_channels = self.encoder.feature_info.channels()
        feature_strides = self.encoder.feature_info.strides()
        full_resolution = (1,) * spatial_dims
        needs_input_stage = feature_strides[0] != full_resolution
        if input_skip and not needs_input_stage:
            raise ValueError(
                "input_skip needs an encoder whose shallowest feature map is below full "
                f"resolution; this one's is at stride {feature_strides[0]}"
            )
        # The skips, shallowest first: the raw input's stage (if any), then the feature maps.
        skip_strides = [full_resolution] * needs_input_stage + feature_strides[:-1]
        num_stages = len(skip_strides)
        if decoder_channels is None:
            input_stage_width = [feature_channels[0] // 2] * needs_input_stage
            decoder_channels = [*reversed(feature_channels[:-1]), *input_stage_width]
        if len(decoder_channels) != num_stages:
            raise ValueError(
                f"decoder_channels needs one entry per decoder stage ({num_stages}, deepest "
                f"first), got {tuple(decoder_channels)}"
            )
        if deep_supervision and not 1 <= deep_supervision_heads < num_stages:
            raise ValueError(
                f"deep_supervision_heads must be between 1 and {num_stages - 1} (the decoder "
                f"stages before the last), got {deep_supervision_heads}"
            )
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.total_stride = feature_strides[-1]
        self.deep_supervision = deep_supervision

        input_skip = needs_input_stage if input_skip is None else input_skip
        input_skip_channels = decoder_channels[-1] if input_skip else 0
        self.input_skip = (
            conv_norm_act(spatial_dims, encoder.in_channels, input_skip_channels, norm, act)
            if input_skip
            else None
        )
        self.needs_input_stage = needs_input_stage
        skip_channels = [input_skip_channels] * needs_input_stage + feature_channels[:-1]
        stage_inputs = [feature_channels[-1], *decoder_channels[:-1]]
        self.stages = nn.ModuleList(
            DecoderStage(
                spatial_dims,
                in_width,
                skip_width,
                out_width,
                scale=_stride_ratio(deeper_stride, skip_stride),
                norm=norm,
                act=act,
                upsample=upsample,
                block=decoder_block,
                cardinality=self.encoder.cardinality,
                base_width=self.encoder.base_width,
            )
            for in_width, skip_width, out_width, deeper_stride, skip_stride in zip(
                stage_inputs,
                reversed(skip_channels),
                decoder_channels,
                reversed(feature_strides[-num_stages:]),
                reversed(skip_strides),
                strict=True,
            )
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.head = conv(decoder_channels[-1], out_channels, 1)
        # Heads on the stages just before the last, highest resolution first.
        num_heads = deep_supervision_heads if deep_supervision else 0
        self.supervision_heads = nn.ModuleList(
            conv(decoder_channels[-2 - i], out_channels, 1) for i in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x.shape[2:], self.total_stride)
        return self.decode(x, self.encoder(x))

    def decode(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """The logits from the input and the encoder's feature maps of it (what a network that
        also reads the encoder's maps, such as a grade head, shares with the decoder)."""
        input_skip = self.input_skip(x) if self.input_skip is not None else None
        skips = [input_skip] * self.needs_input_stage + features[:-1]
        y = features[-1]
        stage_outputs = []
        for stage, skip in zip(self.stages, reversed(skips), strict=True):
            y = stage(y, skip)
            stage_outputs.append(y)
        logits = self.head(y)
        if not (self.training and self.deep_supervision):
            return logits
        # The stages before the last, highest resolution first.
        intermediate = stage_outputs[-2::-1][: len(self.supervision_heads)]
        supervised = [
            F.interpolate(head(output), size=logits.shape[2:], mode=_linear_mode(self.spatial_dims))
            for head, output in zip(self.supervision_heads, intermediate, strict=True)
        ]
        return torch.stack([logits, *supervised], dim=1)


def check_divisible(spatial_shape: Sequence[int], total_stride: Sequence[int]) -> None:
    """Raise a ValueError unless every axis of ``spatial_shape`` is a multiple of its stride.

    Strided convolutions round up, so a size the encoder's stride does not divide would decode
    to a larger output than the input, and the skips would not line up.
    """
    for axis, (size, multiple) in enumerate(zip(spatial_shape, total_stride, strict=True)):
        if size % multiple:
            raise ValueError(
                f"input size {size} along spatial axis {axis} (of spatial shape "
                f"{tuple(spatial_shape)}) is not a multiple of {multiple}, the encoder's total "
                f"stride along that axis; pad the input to multiples of {tuple(total_stride)}, "
                f"e.g. with monai.transforms.DivisiblePad(k={tuple(total_stride)})"
            )


def _stride_ratio(deeper: Sequence[int], shallower: Sequence[int]) -> tuple[int, ...]:
    return tuple(d // s for d, s in zip(deeper, shallower, strict=True))


def _linear_mode(spatial_dims: int) -> str:
    return {2: "bilinear", 3: "trilinear"}[spatial_dims]
