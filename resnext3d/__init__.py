"""resnext3d: 3D ResNeXt encoders, BraTS data and Lightning tasks for volumetric imaging."""

from resnext3d.models import (
    PlannedResNeXtUNet,
    ResNeXt,
    ResNeXtFeatures,
    ResNeXtUNet,
    create_model,
    list_models,
    load_pretrained,
)

__version__ = "0.1.0"

__all__ = [
    "PlannedResNeXtUNet",
    "ResNeXt",
    "ResNeXtFeatures",
    "ResNeXtUNet",
    "__version__",
    "create_model",
    "list_models",
    "load_pretrained",
]
