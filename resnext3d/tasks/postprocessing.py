"""The post-processing BraTS segmentations usually get: small connected components removed, and
an enhancing-tumour prediction too small to be real dropped (the usual fix for low grades, whose
enhancing-tumour truth is empty and scores 0 for any false positive voxel)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage


class RegionPostprocessing:
    """Clean binary region masks, case by case.

    MONAI's ``RemoveSmallObjects`` would need scikit-image; scipy's labelling, already a
    dependency, does the same here.

    Args:
        min_component_mm3: connected components (26-connected) of any region smaller than this
            are removed; 0 keeps every one.
        enhancing_region: the name of the enhancing-tumour region in the task's ``class_names``.
        enhancing_min_mm3: an enhancing-tumour prediction whose total volume is below this is
            removed (its voxels stay in the other regions); 0 keeps it.
    """

    def __init__(
        self,
        min_component_mm3: float = 0.0,
        enhancing_region: str = "ET",
        enhancing_min_mm3: float = 0.0,
    ) -> None:
        self.min_component_mm3 = min_component_mm3
        self.enhancing_region = enhancing_region
        self.enhancing_min_mm3 = enhancing_min_mm3

    def __call__(
        self,
        masks: torch.Tensor,
        region_names: Sequence[str],
        spacing: Sequence[float] | None,
    ) -> torch.Tensor:
        """`masks`: (B, regions, *spatial) of 0/1; `spacing`: mm per voxel (None: 1 mm)."""
        voxel_mm3 = math.prod(spacing) if spacing is not None else 1.0
        cleaned = masks.detach().cpu().numpy().astype(bool)
        if self.min_component_mm3 > 0:
            minimum = self.min_component_mm3 / voxel_mm3
            structure = np.ones((3,) * (masks.ndim - 2), dtype=bool)
            for case in cleaned:
                # Labelled within the box that holds every region's voxels: a tumour fills a
                # small part of a 1 mm head, whose whole grid took most of the time.
                for region in case[(slice(None), *_foreground_box(case))]:
                    labels, count = ndimage.label(region, structure=structure)
                    sizes = np.bincount(labels.ravel(), minlength=count + 1)
                    region &= (sizes >= minimum)[labels]  # in place: a view of `cleaned`
        names = [name.lower() for name in region_names]
        if self.enhancing_min_mm3 > 0 and self.enhancing_region.lower() in names:
            channel = names.index(self.enhancing_region.lower())
            for case in cleaned:
                if case[channel].sum() * voxel_mm3 < self.enhancing_min_mm3:
                    case[channel] = False
        return torch.from_numpy(cleaned).to(masks.device, masks.dtype)


def _foreground_box(regions: np.ndarray) -> tuple[slice, ...]:
    """The smallest box of the spatial axes of `regions` (regions, *spatial) that holds every
    True voxel; empty where there is none."""
    foreground = regions.any(0)
    box = []
    for axis in range(foreground.ndim):
        others = tuple(other for other in range(foreground.ndim) if other != axis)
        indices = np.flatnonzero(foreground.any(others))
        box.append(slice(indices[0], indices[-1] + 1) if len(indices) else slice(0, 0))
    return tuple(box)
