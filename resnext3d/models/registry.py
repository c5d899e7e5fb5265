"""``create_model`` and ``list_models`` over the named presets, in the manner of timm."""

from __future__ import annotations

import fnmatch

from resnext3d.models.presets import PRESETS
from resnext3d.models.resnext import ResNeXt, ResNeXtFeatures
from resnext3d.models.weights import load_pretrained


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style ``pattern``, e.g. ``"resnext*"``."""
    return sorted(name for name in PRESETS if fnmatch.fnmatch(name, pattern))


def create_model(
    name: str,
    *,
    spatial_dims: int = 3,
    features_only: bool = False,
    checkpoint_path: str | None = None,
    inflation: str = "center",
    weights_family: str = "auto",
    **kwargs,
) -> ResNeXt:
    """Build a preset; keyword arguments override the preset's and go to :class:`ResNeXt`.

    ``features_only`` builds the preset as an encoder, a :class:`ResNeXtFeatures` (whose
    ``out_indices`` selects its feature maps), as timm's ``create_model`` does.
    ``checkpoint_path`` loads weights after building, of the family ``weights_family``
    (``"medicalnet"``, ``"kinetics"``, ``"torchvision_video"``, ours; ``"auto"``: detected);
    2D weights into a 3D model are inflated with ``inflation``. See
    :func:`resnext3d.models.weights.load_pretrained`, whose report is logged.
    """
    model_cls = ResNeXtFeatures if features_only else ResNeXt
    model = model_cls(preset=name, spatial_dims=spatial_dims, **kwargs)
    if checkpoint_path is not None:
        load_pretrained(model, checkpoint_path, inflation=inflation, family=weights_family)
    return model
