"""An independent BraTS 2023 lesion-wise scorer, run with ``.venv-crosscheck/bin/python``.

    brats2023_scores.py PREDICTIONS REFERENCES  ->  JSON on stdout:
    {case_id: {"tc"|"wt"|"et": {"dice", "hd95", "lesion_dice", "lesion_hd95",
                                "lesion_tp", "lesion_fn", "lesion_fp"}}}

PREDICTIONS and REFERENCES are folders of BraTS 2023 label maps (1 NCR, 2 ED, 3 ET) paired by case
id: the file name without ``.nii``/``.nii.gz`` and a ``_seg``/``-seg`` suffix.

It checks ``resnext3d evaluate`` (tests/test_evaluate_crosscheck.py) and so shares nothing with it:
no import of the project, and an environment of its own (requirements/crosscheck.lock) without
torch or MONAI. It follows the procedure of the organisers' BraTS 2023 script
(github.com/rachitsaluja/BraTS-2023-Metrics, brats_2023_metrics/surface_distance/brats_metrics.py,
``get_lesion_wise_score`` and ``get_lesion_wise_results``), rewritten here, on the libraries that
script uses: cc3d for the 26-connected components, scipy for the dilation, and DeepMind's
``surface-distance`` package for HD95. Their parameters for gliomas (``BraTS-GLI``): 3 dilations,
lesions of 50 mm³ or less left out, 374 mm for an HD95 that cannot be measured.

``hd95`` and ``lesion_hd95`` are the organisers' (surface-distance: the 95th percentile of each
direction's distances weighted by the area of the surface elements, at the corners of the voxel
grid).

Neither package the task first named does this: ``brats`` (0.1.14) only runs the challenge's
algorithm containers, and ``panoptica`` (2.1.7), on which the later official ``brats-evaluation``
builds, matches instances by overlap (``instance_matcher.py``: one-to-one ``MaxBipartiteMatching``
in brats-evaluation's ``configs/config_gli.yaml``), without the dilation that merges and matches
lesions or the volume threshold, and averages its lesion-wise Dice over true positives alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
from scipy import ndimage

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import surface_distance

# The organisers' get_challenge_parameters("BraTS-GLI") and their value for an infinite HD95.
DILATIONS = 3
MIN_LESION_MM3 = 50.0
WORST_HD95_MM = 374.0
# BraTS 2023 label values of each region, as the organisers' get_tissue_wise_mask.
REGION_LABELS = {"tc": (1, 3), "wt": (1, 2, 3), "et": (3,)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("references", type=Path)
    parser.add_argument("--dilations", type=int, default=DILATIONS)
    parser.add_argument("--min-lesion-mm3", type=float, default=MIN_LESION_MM3)
    args = parser.parse_args(argv)
    predictions, references = label_maps(args.predictions), label_maps(args.references)
    if predictions.keys() != references.keys():
        print(f"unpaired cases: {sorted(predictions.keys() ^ references.keys())}", file=sys.stderr)
        return 1
    scores = {
        case: score_case(predictions[case], references[case], args.dilations, args.min_lesion_mm3)
        for case in sorted(references)
    }
    json.dump(scores, sys.stdout, indent=1)
    return 0


def label_maps(folder: Path) -> dict[str, Path]:
    maps = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith((".nii", ".nii.gz")):
            case = path.name.removesuffix(".gz").removesuffix(".nii")
            maps[case.removesuffix("_seg").removesuffix("-seg")] = path
    return maps


def score_case(
    prediction_file: Path, reference_file: Path, dilations: int, min_lesion_mm3: float
) -> dict[str, dict[str, float]]:
    reference_image = nib.load(reference_file)
    reference = np.asarray(reference_image.dataobj)
    prediction = np.asarray(nib.load(prediction_file).dataobj)
    spacing = tuple(float(mm) for mm in reference_image.header.get_zooms()[:3])
    return {
        region: score_region(
            np.isin(prediction, labels),
            np.isin(reference, labels),
            spacing,
            dilations,
            min_lesion_mm3,
        )  # fmt: skip
        for region, labels in REGION_LABELS.items()
    }


def score_region(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: tuple[float, ...],
    dilations: int,
    min_lesion_mm3: float,
) -> dict[str, float]:
    dice, hd95 = dice_and_hd95(prediction, reference, spacing)
    structure = ndimage.generate_binary_structure(3, 2)
    # Reference components whose dilations touch form one lesion: label the reference voxels by
    # the component of the dilated reference they lie in.
    dilated_components = cc3d.connected_components(
        ndimage.binary_dilation(reference, structure=structure, iterations=dilations),
        connectivity=26,
    )
    lesions = np.where(reference, dilated_components, 0)
    predicted_components = cc3d.connected_components(prediction, connectivity=26)
    voxel_mm3 = float(np.prod(spacing))

    matched_anywhere: set[int] = set()
    lesion_dices, lesion_hd95s, found, missed = [], [], 0, 0
    for lesion in range(1, int(lesions.max()) + 1):
        lesion_mask = lesions == lesion
        # As the organisers do: dilate this lesion alone and take every predicted component
        # inside its dilation, also for the lesions the volume threshold then leaves out.
        reach = ndimage.binary_dilation(lesion_mask, structure=structure, iterations=dilations)
        matches = set(np.unique(predicted_components[reach]).tolist()) - {0}
        matched_anywhere |= matches
        if np.count_nonzero(lesion_mask) * voxel_mm3 <= min_lesion_mm3:
            continue
        lesion_dice, lesion_hd95 = dice_and_hd95(
            np.isin(predicted_components, list(matches)), lesion_mask, spacing
        )
        lesion_dices.append(lesion_dice)
        lesion_hd95s.append(lesion_hd95)
        found, missed = (found + 1, missed) if matches else (found, missed + 1)
    false_positives = len(set(np.unique(predicted_components).tolist()) - {0} - matched_anywhere)

    scored = len(lesion_dices) + false_positives

    def lesion_mean(values: list[float], false_positive_value: float, neither: float) -> float:
        # 0 / 0 is NaN in the organisers' script, which they score 1 (Dice) and 0 (HD95).
        return (
            (sum(values) + false_positives * false_positive_value) / scored if scored else neither
        )

    return {
        "dice": dice,
        "hd95": hd95,
        "lesion_dice": lesion_mean(lesion_dices, 0.0, 1.0),
        "lesion_hd95": lesion_mean(lesion_hd95s, WORST_HD95_MM, 0.0),
        "lesion_tp": found,
        "lesion_fn": missed,
        "lesion_fp": false_positives,
    }


def dice_and_hd95(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float]:
    """Dice and HD95 in mm as DeepMind's surface-distance computes it; both
    masks empty: 1 and 0; one: 0 and 374 (the organisers' infinite HD95 replaced by 374;
    surface-distance's own path for an empty mask uses np.Inf, which NumPy 2 no longer has)."""
    predicted, expected = np.count_nonzero(prediction), np.count_nonzero(reference)
    if not predicted and not expected:
        return 1.0, 0.0
    if not predicted or not expected:
        return 0.0, WORST_HD95_MM
    dice = 2.0 * np.count_nonzero(prediction & reference) / (predicted + expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.filters, .morphology
        distances = surface_distance.compute_surface_distances(
            reference.astype(bool), prediction.astype(bool), spacing
        )
    hd95 = surface_distance.compute_robust_hausdorff(distances, 95)
    return float(dice), float(hd95)


if __name__ == "__main__":
    sys.exit(main())
