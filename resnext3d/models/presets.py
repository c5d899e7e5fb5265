"""Named architectures of the ResNet/ResNeXt family, in the manner of timm's model names.

Names read ``resnext{depth}_{C}x{d}d``: depth counts weighted layers, C is the cardinality and d
the width of each group in the first stage. ``resnet50`` is the paper's C=1, d=64 baseline. A
preset sets only the arguments it names; the others are the 50-layer template's.
"""

from __future__ import annotations

import difflib
from typing import Any

LAYERS_50 = (3, 4, 6, 3)  # ResNet-34 uses the same stage depths with basic blocks
LAYERS_101 = (3, 4, 23, 3)
LAYERS_152 = (3, 8, 36, 3)

# The architecture arguments and their values in the ResNet-50 template.
TEMPLATE: dict[str, Any] = {
    "layers": LAYERS_50,
    "block": "bottleneck",
    "cardinality": 1,
    "base_width": 64,
    "channels": (64, 128, 256, 512),
    "stem_width": 64,
    "se_reduction": None,
}

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
