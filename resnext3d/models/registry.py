"""Named presets of the ResNet/ResNeXt family and ``create_model``, in the manner of timm.

Names read ``resnext{depth}_{C}x{d}d``: depth counts weighted layers, C is the cardinality and d
the width of each group in the first stage. ``resnet50`` is the paper's C=1, d=64 baseline.
"""

from __future__ import annotations

import difflib
import fnmatch

from resnext3d.models.resnext import ResNeXt
from resnext3d.models.weights import load_pretrained

LAYERS_50 = (3, 4, 6, 3)  # ResNet-34 uses the same stage depths with basic blocks
LAYERS_101 = (3, 4, 23, 3)
LAYERS_152 = (3, 8, 36, 3)

PRESETS: dict[str, dict] = {
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


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style ``pattern``, e.g. ``"resnext*"``."""
    return sorted(name for name in PRESETS if fnmatch.fnmatch(name, pattern))


def create_model(
    name: str,
    *,
    spatial_dims: int = 3,
    checkpoint_path: str | None = None,
    inflation: str = "center",
    **kwargs,
) -> ResNeXt:
    """Build a preset; keyword arguments override the preset's and go to :class:`ResNeXt`.

    ``checkpoint_path`` loads weights after building (2D weights into a 3D model are inflated
    with ``inflation``; see :func:`resnext3d.models.weights.load_pretrained`).
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    model = ResNeXt(**{**PRESETS[name], "spatial_dims": spatial_dims, **kwargs})
    if checkpoint_path is not None:
        load_pretrained(model, checkpoint_path, inflation=inflation)
    return model
