"""The BraTS 2023 lesion-wise Dice and HD95 of a case, beside the legacy whole-region ones.

Lesion-wise scoring of one region (TC, WT or ET), as the organisers' evaluation defines it:

1. The reference is dilated (``generate_binary_structure(3, 2)``, ``dilation_iterations`` times:
   3 for gliomas) and each 26-connected component of the dilation is one lesion: the reference
   inside it. Reference components whose dilations touch so become one lesion.
2. A 26-connected component of the prediction that overlaps a lesion's dilation matches it. The
   lesion scores the Dice and HD95 between it and the union of its matches; a lesion without a
   match (a false negative) scores Dice 0 and HD95 374 mm.
3. A predicted component that matches no lesion is a false positive: Dice 0, HD95 374 mm.
4. Lesions of ``min_lesion_mm3`` (50 mm³) or less are left out, and a predicted component that
   matches only such lesions is no false positive either (as in the organisers' code).
5. Lesion-wise Dice = the sum over kept lesions / (kept lesions + false positives), HD95 likewise;
   with neither (e.g. an empty reference predicted empty) Dice 1 and HD95 0.

The legacy scores compare the whole region: Dice 1 and HD95 0 where both are empty, Dice 0 and
HD95 374 mm where only one is (the project's validation metric leaves that HD95 out as NaN; the
challenge scores it, and so does this module).

HD95 is the organisers' (DeepMind's ``surface-distance``, which MONAI's sub-voxel mask edges
reproduce): a mask's surface is the corners of the voxel grid whose 2×2×2 neighbourhood is
neither all inside nor all outside it, each weighted by the area (mm², from the voxel spacing) of
the surface through it; from each surface element of either mask, the Euclidean distance in mm to
the nearest of the other's; HD95 is the larger of the two directions' area-weighted 95th
percentiles. Taking the larger makes it symmetric (a prediction missing half the tumour and one
spilling over it are both penalised), the percentile keeps a few stray voxels from deciding it,
and surfaces, not whole masks, make it a boundary distance. Counting surface voxels instead of
weighting them by area, as MONAI's ``compute_hausdorff_distance`` does, moves the percentile by
tens of mm where about 5% of a surface lies far away (tests/test_evaluate_crosscheck.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage

from resnext3d.data.regions import REGIONS, labels_to_regions
from resnext3d.data.releases import Release

GLIOMA_DILATION_ITERATIONS = 3
MIN_LESION_MM3 = 50.0
# The organisers' HD95 where none can be measured: about the diagonal of BraTS's 240×240×155 mm.
WORST_HD95_MM = 374.0


@dataclass(frozen=True)
class RegionScores:
    """The scores of one region of one case; HD95s in mm.

    Attributes:
        dice, hd95: legacy, of the whole region.
        lesion_dice, lesion_hd95: lesion-wise.
        true_positives: kept reference lesions that the prediction matches.
        false_negatives: kept reference lesions that it misses.
        false_positives: predicted components that match no reference lesion.
    """

    dice: float
    hd95: float
    lesion_dice: float
    lesion_hd95: float
    true_positives: int
    false_negatives: int
    false_positives: int


def case_scores(
    prediction: np.ndarray,
    reference: np.ndarray,
    release: Release,
    spacing: Sequence[float],
    dilation_iterations: int = GLIOMA_DILATION_ITERATIONS,
    min_lesion_mm3: float = MIN_LESION_MM3,
    prediction_file: str | None = None,
    reference_file: str | None = None,
) -> dict[str, RegionScores]:
    """The scores of each region (TC, WT, ET, by name) of two 3-D label maps in the release's
    label values; ``spacing``: mm per voxel along each axis.

    Raises:
        DataError: a map holds values that are not the release's labels (naming its file).
    """
    predicted_regions = labels_to_regions(prediction, release, prediction_file, dtype=bool)
    reference_regions = labels_to_regions(reference, release, reference_file, dtype=bool)
    return {
        region: region_scores(predicted, expected, spacing, dilation_iterations, min_lesion_mm3)
        for region, predicted, expected in zip(
            REGIONS, predicted_regions, reference_regions, strict=True
        )
    }


def region_scores(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    dilation_iterations: int = GLIOMA_DILATION_ITERATIONS,
    min_lesion_mm3: float = MIN_LESION_MM3,
) -> RegionScores:
    """Legacy and lesion-wise scores of one region: 3-D masks of one shape (see module doc), or
    2-D ones (slices), whose neighbourhoods are the 2-D analogues (8 and 4 neighbours)."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.ndim not in (2, 3) or prediction.shape != reference.shape:
        raise ValueError(
            f"prediction and reference must be 2-D or 3-D masks of one shape, "
            f"got {prediction.shape} and {reference.shape}"
        )
    # Components: every neighbour (26 in 3-D); dilation: faces and edges (18 in 3-D).
    connectivity = ndimage.generate_binary_structure(prediction.ndim, prediction.ndim)
    dilation = ndimage.generate_binary_structure(prediction.ndim, 2)
    spacing = tuple(float(mm) for mm in spacing)  # MONAI takes a sequence of one number type
    # Everything below happens within reach of the masks: cropped to them, with room for the
    # dilation and a background voxel beyond it, a tumour in a whole head is scored 10-40 times
    # faster, with the same components, distances and so scores.
    box = _masks_box(prediction | reference, margin=dilation_iterations + 1)
    prediction, reference = prediction[box], reference[box]
    dice, hd95 = _dice_and_hd95(prediction, reference, spacing)

    # Dilating the whole reference dilates each of its components, and those whose dilations
    # touch form one component of the result: labelling it finds the merged lesions at once.
    dilated = ndimage.binary_dilation(reference, structure=dilation, iterations=dilation_iterations)
    dilated_lesions, lesion_count = ndimage.label(dilated, structure=connectivity)
    lesions = np.where(reference, dilated_lesions, 0)
    components, component_count = ndimage.label(prediction, structure=connectivity)
    touching = (dilated_lesions > 0) & (components > 0)
    lesion_of_match, matching_component = np.unique(
        np.stack([dilated_lesions[touching], components[touching]]), axis=1
    )
    false_positives = component_count - len(set(matching_component.tolist()))

    lesion_volumes_mm3 = np.bincount(lesions.ravel(), minlength=lesion_count + 1) * np.prod(spacing)
    lesion_boxes, component_boxes = ndimage.find_objects(lesions), ndimage.find_objects(components)
    lesion_dices, lesion_hd95s, missed = [], [], 0
    for lesion in range(1, lesion_count + 1):
        if lesion_volumes_mm3[lesion] <= min_lesion_mm3:
            continue
        matches = matching_component[lesion_of_match == lesion]
        if matches.size == 0:
            missed += 1
            lesion_dices.append(0.0)
            lesion_hd95s.append(WORST_HD95_MM)
            continue
        # Both masks lie in this box, and distances do not change with the crop.
        box = _enclosing_box([lesion_boxes[lesion - 1], *(component_boxes[m - 1] for m in matches)])
        lesion_dice, lesion_hd95 = _dice_and_hd95(
            np.isin(components[box], matches), lesions[box] == lesion, spacing
        )
        lesion_dices.append(lesion_dice)
        lesion_hd95s.append(lesion_hd95)

    scored = len(lesion_dices) + false_positives
    if scored:
        lesion_dice = sum(lesion_dices) / scored
        lesion_hd95 = (sum(lesion_hd95s) + false_positives * WORST_HD95_MM) / scored
    else:  # nothing to find and nothing falsely found
        lesion_dice, lesion_hd95 = 1.0, 0.0
    return RegionScores(
        dice=dice,
        hd95=hd95,
        lesion_dice=lesion_dice,
        lesion_hd95=lesion_hd95,
        true_positives=len(lesion_dices) - missed,
        false_negatives=missed,
        false_positives=false_positives,
    )


def _dice_and_hd95(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float]:
    """Dice and HD95 (mm) of two masks, with the challenge's scores where one or both are empty."""
    predicted_voxels, reference_voxels = np.count_nonzero(prediction), np.count_nonzero(reference)
    if not predicted_voxels and not reference_voxels:
        return 1.0, 0.0
    if not predicted_voxels or not reference_voxels:
        return 0.0, WORST_HD95_MM
    overlap = np.count_nonzero(prediction & reference)
    return float(2 * overlap / (predicted_voxels + reference_voxels)), _hd95_mm(
        prediction, reference, spacing
    )


def _hd95_mm(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The area-weighted HD95 of two non-empty masks (see the module's description)."""
    # Exact float32 arithmetic on the CPU, also when called within a bf16 autocast (validation).
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecations
        edges = get_mask_edges(prediction, reference, crop=True, spacing=spacing)
    predicted_edges, reference_edges, predicted_areas, reference_areas = map(np.asarray, edges)
    return max(
        _percentile_by_area(
            get_surface_distance(predicted_edges, reference_edges, "euclidean", spacing),
            predicted_areas[predicted_edges],
        ),
        _percentile_by_area(
            get_surface_distance(reference_edges, predicted_edges, "euclidean", spacing),
            reference_areas[reference_edges],
        ),
    )


def _percentile_by_area(distances: np.ndarray, areas: np.ndarray, percent: float = 95) -> float:
    """The smallest distance within which `percent`% of the surface area lies."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / areas.sum()
    index = min(int(np.searchsorted(cumulative, percent / 100)), len(distances) - 1)
    return float(distances[order][index])


def _masks_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The box around `mask`'s voxels widened by `margin` voxels (within the volume); the
    whole volume where the mask is empty."""
    voxels = np.nonzero(mask)
    if not voxels[0].size:
        return tuple(slice(None) for _ in mask.shape)
    return tuple(
        slice(max(int(axis.min()) - margin, 0), min(int(axis.max()) + margin + 1, size))
        for axis, size in zip(voxels, mask.shape, strict=True)
    )


def _enclosing_box(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(
        slice(min(box[axis].start for box in boxes), max(box[axis].stop for box in boxes))
        for axis in range(len(boxes[0]))
    )
