"""ResNet and ResNeXt for 2D and 3D inputs, following Xie et al. 2017 (Table 1).

One class covers the whole family: ResNeXt's aggregated transformation is the bottleneck's middle
convolution split into ``cardinality`` groups of ``base_width`` channels each (C and d in the
paper); ``cardinality=1, base_width=64`` is the ResNet baseline. Module names follow torchvision's
``resnet.py`` so that 2D ImageNet weights load as they are and inflate into 3D.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers import DropPath, get_act_layer, get_norm_layer
from monai.networks.layers.factories import Conv, Pool, split_args
from monai.utils import ensure_tuple_rep
from torch.utils.checkpoint import checkpoint

from resnext3d.models.construction import records_init_args
from resnext3d.models.presets import architecture, geometry
from resnext3d.models.pretrained import default_pretrained_cfg
from resnext3d.models.weights import load_pretrained

LayerSpec = str | tuple[str, dict]
SpatialSize = int | Sequence[int]


def make_norm(norm: LayerSpec, spatial_dims: int, channels: int) -> nn.Module:
    """A norm layer by MONAI name; ``group`` gets at most 32 groups that divide ``channels``."""
    name, kwargs = split_args(norm)
    if name.lower() == "group" and "num_groups" not in kwargs:
        kwargs = {**kwargs, "num_groups": _largest_divisor_up_to(channels, 32)}
    return get_norm_layer((name, kwargs), spatial_dims=spatial_dims, channels=channels)


def _largest_divisor_up_to(n: int, limit: int) -> int:
    return max(g for g in range(1, min(n, limit) + 1) if n % g == 0)


def _squeeze_excitation(
    spatial_dims: int, channels: int, reduction: int | None, act: LayerSpec
) -> nn.Module | None:
    if not reduction:
        return None
    return ChannelSELayer(spatial_dims, channels, r=reduction, acti_type_1=act)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions (ResNet-18/34). It has no grouped convolution, so C=1, d=64 only."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: SpatialSize = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 64,
        spatial_dims: int = 3,
        norm: LayerSpec = "batch",
        act: LayerSpec = ("relu", {"inplace": True}),
        se_reduction: int | None = None,
        drop_path: float = 0.0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock has no grouped convolution: it needs cardinality=1 and base_width=64, "
                f"got {cardinality}x{base_width}d; use block='bottleneck' for ResNeXt"
            )
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(
            in_channels, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = make_norm(norm, spatial_dims, planes)
        self.act1 = get_act_layer(act)
        self.conv2 = conv(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = make_norm(norm, spatial_dims, planes)
        self.se = _squeeze_excitation(spatial_dims, planes, se_reduction, act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = downsample
        self.act2 = get_act_layer(act)

    def zero_init_last(self) -> None:
        if self.bn2.weight is not None:  # affine-free norms have no scale to zero
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        return self.act2(self.drop_path(x) + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 grouped (C groups of width d, carries the stride) → 1×1 expand."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: SpatialSize = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 64,
        spatial_dims: int = 3,
        norm: LayerSpec = "batch",
        act: LayerSpec = ("relu", {"inplace": True}),
        se_reduction: int | None = None,
        drop_path: float = 0.0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        out_channels = planes * self.expansion
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(norm, spatial_dims, width)
        self.act1 = get_act_layer(act)
        self.conv2 = conv(
            width, width, 3, stride, dilation, dilation, groups=cardinality, bias=False
        )
        self.bn2 = make_norm(norm, spatial_dims, width)
        self.act2 = get_act_layer(act)
        self.conv3 = conv(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, spatial_dims, out_channels)
        self.se = _squeeze_excitation(spatial_dims, out_channels, se_reduction, act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = downsample
        self.act3 = get_act_layer(act)

    def zero_init_last(self) -> None:
        if self.bn3.weight is not None:  # affine-free norms have no scale to zero
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        return self.act3(self.drop_path(x) + shortcut)


class ZeroPadShortcut(nn.Module):
    """He et al.'s shortcut A, which MedicalNet's and 3D-ResNets-PyTorch's ResNet-18/34 use: the
    input subsampled at the block's stride, its new channels zeros; no parameters."""

    def __init__(self, out_channels: int, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[(..., *(slice(None, None, s) for s in self.stride))]
        padding = x.new_zeros(x.shape[0], self.out_channels - x.shape[1], *x.shape[2:])
        return torch.cat([x, padding], dim=1)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class FeatureInfo:
    """Channels and strides of an encoder's feature maps, shallowest first (timm's
    ``feature_info``)."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = entries

    def channels(self) -> list[int]:
        return [e["num_chs"] for e in self.entries]

    def strides(self) -> list[tuple[int, ...]]:
        """The stride of each feature map along every spatial axis."""
        return [e["stride"] for e in self.entries]

    def reduction(self) -> list[int | tuple[int, ...]]:
        """One integer per feature map where strides are isotropic, else the per-axis strides."""
        return [e["reduction"] for e in self.entries]

    def __repr__(self) -> str:
        return f"FeatureInfo(channels={self.channels()}, reduction={self.reduction()})"


@records_init_args
class ResNeXt(nn.Module):
    """A ResNet/ResNeXt classifier for ``spatial_dims`` 2 or 3; :class:`ResNeXtFeatures` is the
    same network as an encoder.

    ``ResNeXt(preset="resnext50_32x4d", drop_path_rate=0.05)`` builds a named preset
    (:data:`resnext3d.models.PRESETS`); each architecture argument (layers, block, cardinality,
    base_width, channels, stem_width, se_reduction, the stem's kernel and strides, strides,
    dilations, shortcut) given replaces the preset's value. Those arguments default to None, not
    to the preset's values, because a config passes every argument: a value there could not be
    told from an override.

    Args:
        preset: a preset's name; ``"resnet50"`` is the paper's 50-layer template. None: the
            template's values, for a network that gives every architecture argument (the
            encoder of a planned UNet, :func:`resnext3d.models.plan_unet`).
        layers: blocks per stage; ``(3, 4, 6, 3)`` is the 50-layer template. Any number of
            stages works (segmentation encoders plan theirs); ``channels`` and ``strides`` then
            need one entry per stage too.
        block: ``"bottleneck"`` (ResNeXt, ResNet-50 and deeper) or ``"basic"`` (ResNet-18/34).
        cardinality: C, the number of groups of the grouped 3×3 convolution.
        base_width: d, the width of each group in the first stage (doubles every stage).
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels, e.g. 4 for the BraTS MRI modalities.
        num_classes: classifier outputs; 0 keeps pooled features and no classifier.
        channels: ``planes`` of each stage; block outputs are ``planes * block.expansion``.
        stem_type: ``"basic"`` (one k×k convolution) or ``"deep"`` (three 3×3 convolutions).
        stem_width: channels of the stem's output.
        stem_kernel_size: kernel of the basic stem's convolution, one value or one per axis
            (padded by half, so the stride alone sets the output size).
        stem_stride: stride of the stem convolution, one value or one per axis; the max-pool
            after it uses the same stride unless ``max_pool_stride`` is given, so ``(1, 2, 2)``
            keeps thick slices for anisotropic MRI.
        max_pool_stride: stride of the stem's max-pool (3×3 kernel), one value or one per axis,
            where it differs from the stem's: 3D-ResNets-PyTorch's stem keeps the time axis
            (``stem_stride=(1, 2, 2)``) and its max-pool halves every axis (``2``).
        no_max_pool: drop the stem's max-pool (stage 1 then runs at the stem's resolution).
        strides: stride of each stage, each one value or one per axis.
        dilations: dilation of each stage's 3×3 convolutions, one per stage, in every block of
            the stage: a stage of stride 1 and dilation 2 sees as far as one of stride 2 and
            keeps the resolution (MedicalNet's ``strides=(1, 2, 1, 1)``,
            ``dilations=(1, 1, 2, 4)``: features at stride 8). None: 1 everywhere.
        shortcut: where a block changes the shape, ``"projection"`` (a strided 1×1 convolution
            and a norm, He et al.'s shortcut B) or ``"zero_pad"`` (the input subsampled, new
            channels zero, no parameters: shortcut A, which MedicalNet's ResNet-18/34 use).
        norm: norm layer by MONAI name (``"batch"``, ``"instance"``, ``"group"``, or
            ``("group", {"num_groups": 16})``), used for every norm layer of the network.
        act: activation by MONAI name, used for every activation of the network.
        se_reduction: a squeeze-and-excitation layer with this reduction ratio ends every block
            (SE-ResNeXt uses 16); 0 for none where the preset has one.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks.
        zero_init_last: start every block's last norm at zero scale, so blocks begin as identity.
        grad_checkpointing: recompute the stem's and every block's activations in the backward
            pass: far fewer activations kept, for more step time (measured in the README's
            "Speed and memory"). The recomputation repeats each batch norm's forward, so running
            statistics move twice per step, as in timm and torchvision.
        checkpoint_path: a weight file to load after building (:func:`resnext3d.load_pretrained`:
            ours, 2D weights inflated, or a family of published 3D weights), so that a config
            fine-tunes from it: ``--model.init_args.network.init_args.checkpoint_path FILE``.
            Its report is logged.
        weights_family: the family of ``checkpoint_path``'s weights
            (:data:`resnext3d.models.families.FAMILIES`: ``"medicalnet"``, ``"kinetics"``,
            ``"torchvision_video"``, ``"resnext3d"``); ``"auto"`` tells it from the keys and
            the architecture.
    """

    def __init__(
        self,
        preset: str | None = "resnet50",
        layers: Sequence[int] | None = None,
        block: Literal["bottleneck", "basic"] | None = None,
        cardinality: int | None = None,
        base_width: int | None = None,
        spatial_dims: int = 3,
        in_channels: int = 3,
        num_classes: int = 1000,
        channels: Sequence[int] | None = None,
        stem_type: Literal["basic", "deep"] = "basic",
        stem_width: int | None = None,
        stem_kernel_size: SpatialSize | None = None,
        stem_stride: SpatialSize | None = None,
        max_pool_stride: SpatialSize | None = None,
        no_max_pool: bool | None = None,
        strides: Sequence[SpatialSize] | None = None,
        dilations: Sequence[int] | None = None,
        shortcut: Literal["projection", "zero_pad"] | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = ("relu", {"inplace": True}),
        se_reduction: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
        grad_checkpointing: bool = False,
        checkpoint_path: str | None = None,
        weights_family: str = "auto",
    ) -> None:
        super().__init__()
        chosen = architecture(
            preset,
            layers=layers,
            block=block,
            cardinality=cardinality,
            base_width=base_width,
            channels=channels,
            stem_width=stem_width,
            se_reduction=se_reduction,
            stem_kernel_size=stem_kernel_size,
            stem_stride=stem_stride,
            max_pool_stride=max_pool_stride,
            no_max_pool=no_max_pool,
            strides=strides,
            dilations=dilations,
            shortcut=shortcut,
        )
        layers, block, channels = chosen["layers"], chosen["block"], chosen["channels"]
        cardinality, base_width = chosen["cardinality"], chosen["base_width"]
        stem_width, se_reduction = chosen["stem_width"], chosen["se_reduction"]
        _check_arguments(
            layers, block, cardinality, base_width, spatial_dims, channels, chosen["strides"]
        )
        _check_shortcut_and_dilations(chosen["shortcut"], chosen["dilations"], layers)
        # Strides and dilations per axis: what weights do not show, which their loader checks.
        self.geometry = geometry(chosen, spatial_dims)
        stem_stride = self.geometry["stem_stride"]
        # What was built, for tables, studies and decoders: C, d and the depth of each stage.
        self.layers, self.cardinality, self.base_width = tuple(layers), cardinality, base_width
        block_cls = BLOCKS[block]
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = grad_checkpointing
        conv = Conv[Conv.CONV, spatial_dims]

        if stem_type == "deep":
            half = stem_width // 2
            self.conv1 = nn.Sequential(
                conv(in_channels, half, 3, stride=stem_stride, padding=1, bias=False),
                make_norm(norm, spatial_dims, half),
                get_act_layer(act),
                conv(half, half, 3, padding=1, bias=False),
                make_norm(norm, spatial_dims, half),
                get_act_layer(act),
                conv(half, stem_width, 3, padding=1, bias=False),
            )
            self.first_conv = "conv1.0"
        else:
            kernel = ensure_tuple_rep(chosen["stem_kernel_size"], spatial_dims)
            padding = tuple(k // 2 for k in kernel)
            self.conv1 = conv(in_channels, stem_width, kernel, stem_stride, padding, bias=False)
            self.first_conv = "conv1"
        self.bn1 = make_norm(norm, spatial_dims, stem_width)
        self.act1 = get_act_layer(act)
        max_pool_stride = self.geometry["max_pool_stride"]
        self.maxpool = (
            nn.Identity()
            if max_pool_stride is None
            else Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=max_pool_stride, padding=1)
        )
        feature_stride = stem_stride
        feature_info = [_feature_entry(stem_width, feature_stride)]
        if max_pool_stride is not None:
            feature_stride = _multiply(feature_stride, max_pool_stride)

        num_blocks = sum(layers)
        block_drop_rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        stage_in = stem_width
        stages = zip(
            layers, channels, self.geometry["strides"], self.geometry["dilations"], strict=True
        )
        for index, (depth, planes, stride, dilation) in enumerate(stages, start=1):
            stage, stage_in = self._make_stage(
                block_cls,
                stage_in,
                planes,
                depth,
                stride,
                block_drop_rates[:depth],
                chosen["shortcut"],
                dilation=dilation,
                cardinality=cardinality,
                base_width=base_width,
                spatial_dims=spatial_dims,
                norm=norm,
                act=act,
                se_reduction=se_reduction,
            )
            block_drop_rates = block_drop_rates[depth:]
            self.add_module(f"layer{index}", stage)
            feature_stride = _multiply(feature_stride, stride)
            feature_info.append(_feature_entry(stage_in, feature_stride))
        self.num_features = stage_in
        # Every feature map forward_intermediates can return: the stem's, then each stage's.
        self.feature_info = FeatureInfo(feature_info)

        self.avgpool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = nn.Linear(stage_in, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)
        # What its input must be (timm's attribute): a run or a weights folder fills it in.
        self.pretrained_cfg = default_pretrained_cfg(self, preset)
        if checkpoint_path is not None:
            load_pretrained(self, checkpoint_path, family=weights_family)

    @staticmethod
    def _make_stage(
        block_cls: type[nn.Module],
        in_channels: int,
        planes: int,
        depth: int,
        stride: tuple[int, ...],
        drop_rates: list[float],
        shortcut: str,
        **block_kwargs,
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * block_cls.expansion
        downsample = None
        changes_shape = any(s != 1 for s in stride) or in_channels != out_channels
        if changes_shape and shortcut == "zero_pad":
            downsample = ZeroPadShortcut(out_channels, stride)
        elif changes_shape:
            spatial_dims = block_kwargs["spatial_dims"]
            downsample = nn.Sequential(
                Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1, stride, bias=False),
                make_norm(block_kwargs["norm"], spatial_dims, out_channels),
            )
        blocks = [
            block_cls(
                in_channels if i == 0 else out_channels,
                planes,
                stride=stride if i == 0 else 1,
                downsample=downsample if i == 0 else None,
                drop_path=drop_rates[i],
                **block_kwargs,
            )
            for i in range(depth)
        ]
        return nn.Sequential(*blocks), out_channels

    def _init_weights(self, zero_init_last: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif (
                isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm)
                and module.weight is not None
            ):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if hasattr(module, "zero_init_last"):
                    module.zero_init_last()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter names by depth, as timm's: the stem, then each stage (``coarse``) or each
        block; what matches neither, the classifier, comes last
        (:func:`resnext3d.training.layer_decay.layer_ids`)."""
        return {
            "stem": r"^conv1|^bn1\.",
            "blocks": r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\.",
        }

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (0: no classifier)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's feature map, and the max-pooled map the first stage takes."""
        x = self.act1(self.bn1(self.conv1(x)))
        return x, self.maxpool(x)

    def _forward_stages(
        self, x: torch.Tensor, num_stages: int | None = None
    ) -> Iterator[torch.Tensor]:
        """The stem's feature map, then each stage's, up to ``num_stages`` (None: all).

        With gradient checkpointing, the stem and every block are recomputed in the backward
        pass. The stem works at the highest resolution: at 128³ its activations are about half of
        what per-block checkpointing leaves, so it is recomputed too, with the max-pool, whose
        saved input would otherwise keep the stem's output for the backward pass.
        """
        recompute = self.grad_checkpointing and torch.is_grad_enabled()

        def run(function, x: torch.Tensor):
            return checkpoint(function, x, use_reentrant=False) if recompute else function(x)

        stem, x = run(self._stem, x)
        yield stem
        stages = [getattr(self, f"layer{index}") for index in range(1, len(self.layers) + 1)]
        for stage in stages[:num_stages]:
            for block in stage:
                x = run(block, x)
            yield x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps on the way through the network, as timm's ``forward_intermediates``.

        Args:
            indices: which maps: 0 is the stem's (stride 2), 1… the stages' (4…32); negative
                ones count from the deepest; an int n takes the last n; None takes them all.
            stop_early: run no stage deeper than the deepest map taken.
            intermediates_only: return the maps alone.

        Returns:
            The maps, shallowest first; unless ``intermediates_only``, preceded by the last
            stage's output (what :meth:`forward_head` takes).
        """
        take_indices, deepest = _take_indices(len(self.layers) + 1, indices)
        maps = self._forward_stages(x, num_stages=deepest if stop_early else None)
        intermediates = []
        for index, feature_map in enumerate(maps):
            if index in take_indices:
                intermediates.append(feature_map)
        return intermediates if intermediates_only else (feature_map, intermediates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (stride 32 with the default strides)."""
        (deepest,) = self.forward_intermediates(x, indices=1, intermediates_only=True)
        return deepest

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@records_init_args
class ResNeXtFeatures(ResNeXt):
    """A :class:`ResNeXt` without its classifier, returning feature maps: the encoder of a UNet
    (timm's ``features_only`` models, MONAI's ``ResNetFeatures``).

    ``feature_info`` describes the maps ``forward`` returns.

    Args:
        preset: as :class:`ResNeXt`'s.
        out_indices: which feature maps, as :meth:`ResNeXt.forward_intermediates`'s
            ``indices``: 0 is the stem (stride 2), 1… the stages (4…32); None for all of them.
        kwargs: :class:`ResNeXt`'s arguments, but the classifier's (``num_classes``,
            ``drop_rate``).
    """

    def __init__(
        self,
        preset: str | None = "resnet50",
        out_indices: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(preset, num_classes=0, drop_rate=0.0, **kwargs)
        # A classifier here would be parameters no loss reaches, which DDP refuses.
        del self.avgpool, self.fc
        self.out_indices, _ = _take_indices(len(self.layers) + 1, out_indices)
        self.feature_info = FeatureInfo([self.feature_info.entries[i] for i in self.out_indices])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_intermediates(
            x, self.out_indices, stop_early=True, intermediates_only=True
        )


def _take_indices(num_maps: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """``indices`` (as :meth:`ResNeXt.forward_intermediates` takes them) as ascending
    non-negative indices, and the deepest of them."""
    if indices is None:
        indices = num_maps
    if isinstance(indices, int):
        if not 0 < indices <= num_maps:
            raise ValueError(f"can take the last 1 to {num_maps} feature maps, not {indices}")
        indices = range(num_maps - indices, num_maps)
    taken = sorted({index % num_maps for index in indices if -num_maps <= index < num_maps})
    if len(taken) != len(set(indices)) or not taken:
        raise ValueError(
            f"feature map indices must be distinct, between {-num_maps} and {num_maps - 1}, got "
            f"{list(indices)}"
        )
    return taken, taken[-1]


def _multiply(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(x * y for x, y in zip(a, b, strict=True))


def _feature_entry(channels: int, stride: tuple[int, ...]) -> dict:
    reduction = stride[0] if len(set(stride)) == 1 else stride
    return {"num_chs": channels, "stride": stride, "reduction": reduction}


def _check_shortcut_and_dilations(
    shortcut: str, dilations: Sequence[int] | None, layers: Sequence[int]
) -> None:
    if shortcut not in ("projection", "zero_pad"):
        raise ValueError(f"shortcut must be 'projection' or 'zero_pad', got {shortcut!r}")
    if dilations is not None and (len(dilations) != len(layers) or any(d < 1 for d in dilations)):
        raise ValueError(
            f"dilations needs one positive entry per stage ({len(layers)}, as layers has), got "
            f"{dilations!r}"
        )


def _check_arguments(
    layers: Sequence[int],
    block: str,
    cardinality: int,
    base_width: int,
    spatial_dims: int,
    channels: Sequence[int],
    strides: Sequence[SpatialSize],
) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    if cardinality < 1 or base_width < 1:
        raise ValueError(
            f"cardinality (C) and base_width (d) must be positive, got C={cardinality}, "
            f"d={base_width}"
        )
    if not layers:
        raise ValueError("layers needs one entry per stage, got none")
    for name, values in (("channels", channels), ("strides", strides)):
        if len(values) != len(layers):
            raise ValueError(
                f"{name} needs one entry per stage ({len(layers)}, as layers has), got {values!r}"
            )
    if block == "bottleneck" and any(planes * base_width < 64 for planes in channels):
        raise ValueError(
            f"base_width d={base_width} leaves stage widths {list(channels)} with groups of "
            f"no channels: each group's width is planes * d / 64"
        )
