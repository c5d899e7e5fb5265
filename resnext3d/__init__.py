"""resnext3d: 3D ResNeXt encoders, BraTS data and Lightning tasks for volumetric imaging."""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resnext3d.models import (
        PlannedResNeXtUNet,
        ResNeXt,
        ResNeXtFeatures,
        ResNeXtUNet,
        create_model,
        from_pretrained,
        list_models,
        load_pretrained,
        save_pretrained,
    )

__version__ = "0.1.0"

__all__ = [
    "PlannedResNeXtUNet",
    "ResNeXt",
    "ResNeXtFeatures",
    "ResNeXtUNet",
    "__version__",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_pretrained",
    "save_pretrained",
]


def __getattr__(name: str):
    # The networks import MONAI, seconds of it: `resnext3d --help` and the tools that build no
    # network, which import this package first, do without.
    if name in __all__:
        return getattr(importlib.import_module("resnext3d.models"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
