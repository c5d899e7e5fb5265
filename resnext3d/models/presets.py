"""Named architectures of the ResNet/ResNeXt family, in the manner of timm's model names.

Names read ``resnext{depth}_{C}x{d}d``: depth counts weighted layers, C is the cardinality and d
the width of each group in the first stage. ``resnet50`` is the paper's C=1, d=64 baseline. A
preset sets only the arguments it names; the others are the 50-layer template's.

The presets named after a family of published 3D weights (``medicalnet_*``, ``kinetics_*``,
``r3d_18``) build that family's architecture exactly, stem, strides, dilations and shortcuts
included, so that its weights (:mod:`resnext3d.models.families`) give its outputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

LAYERS_50 = (3, 4, 6, 3)  # ResNet-34 uses the same stage depths with basic blocks
LAYERS_101 = (3, 4, 23, 3)
LAYERS_152 = (3, 8, 36, 3)
LAYERS_200 = (3, 24, 36, 3)

# The architecture arguments and their values in the ResNet-50 template.
TEMPLATE: dict[str, Any] = {
    "layers": LAYERS_50,
    "block": "bottleneck",
    "cardinality": 1,
    "base_width": 64,
    "channels": (64, 128, 256, 512),
    "stem_width": 64,
    "se_reduction": None,
    "stem_kernel_size": 7,
    "stem_stride": 2,
    "max_pool_stride": None,  # the stem's stride
    "no_max_pool": False,
    "strides": (1, 2, 2, 2),
    "dilations": None,  # 1 in every stage
    "shortcut": "projection",
}

# Tencent/MedicalNet (Chen et al. 2019, Med3D), trained on 23 medical segmentation data sets:
# one input channel, a 7×7×7 stem of stride 2, and the last two stages at stride 1 with
# dilated 3×3×3 convolutions (dilation 2, then 4), so the features stay at stride 8. Their
# ResNet-18 and -34 have zero-padding shortcuts (type A), the others projections (B).
MEDICALNET = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
# kenshohara/3D-ResNets-PyTorch (Hara et al. 2018), trained on Kinetics (and Moments in Time):
# a 7×7×7 stem that keeps the time axis (stride (1, 2, 2)), then a max-pool of stride 2 on
# every axis.
KINETICS = dict(stem_stride=(1, 2, 2), max_pool_stride=2)

PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", layers=LAYERS_50),
    "resnet50": dict(layers=LAYERS_50),
    "resnet101": dict(layers=LAYERS_101),
    "resnet152": dict(layers=LAYERS_152),
    # Small ResNeXts for CPU runs and tests: fewer blocks, the same template.
    "resnext14_tiny": dict(
        layers=(1, 1, 1, 1), cardinality=8, base_width=8, channels=(32, 64, 128, 256), stem_width=32
    ),
    "resnext26_32x4d": dict(layers=(2, 2, 2, 2), cardinality=32, base_width=4),
    "resnext50_32x4d": dict(layers=LAYERS_50, cardinality=32, base_width=4),
    "resnext101_32x8d": dict(layers=LAYERS_101, cardinality=32, base_width=8),
    "resnext101_64x4d": dict(layers=LAYERS_101, cardinality=64, base_width=4),
    "resnext152_32x4d": dict(layers=LAYERS_152, cardinality=32, base_width=4),
    "seresnext50_32x4d": dict(layers=LAYERS_50, cardinality=32, base_width=4, se_reduction=16),
    "medicalnet_resnet10": dict(block="basic", layers=(1, 1, 1, 1), **MEDICALNET),
    "medicalnet_resnet18": dict(
        block="basic", layers=(2, 2, 2, 2), shortcut="zero_pad", **MEDICALNET
    ),
    "medicalnet_resnet34": dict(block="basic", layers=LAYERS_50, shortcut="zero_pad", **MEDICALNET),
    "medicalnet_resnet50": dict(layers=LAYERS_50, **MEDICALNET),
    "medicalnet_resnet101": dict(layers=LAYERS_101, **MEDICALNET),
    "medicalnet_resnet152": dict(layers=LAYERS_152, **MEDICALNET),
    "medicalnet_resnet200": dict(layers=LAYERS_200, **MEDICALNET),
    # The 2020 release (r3d18_K_200ep.pth …): projection shortcuts at every depth.
    "kinetics_resnet18": dict(block="basic", layers=(2, 2, 2, 2), **KINETICS),
    "kinetics_resnet34": dict(block="basic", layers=LAYERS_50, **KINETICS),
    "kinetics_resnet50": dict(layers=LAYERS_50, **KINETICS),
    "kinetics_resnet101": dict(layers=LAYERS_101, **KINETICS),
    "kinetics_resnet152": dict(layers=LAYERS_152, **KINETICS),
    "kinetics_resnet200": dict(layers=LAYERS_200, **KINETICS),
    # resnext-101-kinetics.pth (2018): their bottleneck's "planes" are twice ours, with
    # expansion 2 and C·planes/32 middle channels, which is the same 32×4d network.
    "kinetics_resnext101_32x4d": dict(layers=LAYERS_101, cardinality=32, base_width=4, **KINETICS),
    # torchvision's r3d_18 (Tran et al. 2018), trained on Kinetics-400: a (3, 7, 7) stem that
    # keeps the time axis, no max-pool.
    "r3d_18": dict(
        block="basic",
        layers=(2, 2, 2, 2),
        stem_kernel_size=(3, 7, 7),
        stem_stride=(1, 2, 2),
        no_max_pool=True,
    ),
}


def lookup_preset(name: str, table: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    """``table[name]``, or a ValueError naming the closest names and every available one."""
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(table))}")
    return table[name]


def architecture(preset: str | None, **given: Any) -> dict[str, Any]:
    """The architecture arguments of a network: each one given (not None), else the preset's
    (no preset: a network that gives them all, as a planned UNet's encoder), else the
    template's."""
    unknown = set(given) - set(TEMPLATE)
    if unknown:
        raise TypeError(f"not architecture arguments: {', '.join(sorted(unknown))}")
    chosen = {**TEMPLATE, **(lookup_preset(preset, PRESETS, "model") if preset else {})}
    chosen.update({name: value for name, value in given.items() if value is not None})
    return chosen


def geometry(chosen: Mapping[str, Any], spatial_dims: int) -> dict[str, Any]:
    """How a network's stem and stages stride and dilate, strides one value per axis: what its
    weights do not show, and a family's weights assume (``chosen`` as :func:`architecture`
    returns it). ``max_pool_stride`` is None without a max-pool."""
    stem_stride = _per_axis(chosen["stem_stride"], spatial_dims, "stem_stride")
    max_pool_stride = chosen["max_pool_stride"] or stem_stride
    return {
        "stem_stride": stem_stride,
        "max_pool_stride": (
            None
            if chosen["no_max_pool"]
            else _per_axis(max_pool_stride, spatial_dims, "max_pool_stride")
        ),
        "strides": tuple(_per_axis(s, spatial_dims, "strides") for s in chosen["strides"]),
        "dilations": tuple(chosen["dilations"] or (1,) * len(chosen["layers"])),
    }


def _per_axis(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * spatial_dims
    if len(values) != spatial_dims:
        raise ValueError(f"{name}: {value!r} needs one value or {spatial_dims}, one per axis")
    return values
