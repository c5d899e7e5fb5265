"""Lesion-wise and legacy BraTS scores on small volumes whose answers are worked out by hand."""

import numpy as np
import pytest

from resnext3d.data.errors import DataError
from resnext3d.evaluation import WORST_HD95_MM, case_scores, region_scores

SHAPE = (32, 32, 32)
ISOTROPIC = (1.0, 1.0, 1.0)


def cubes(*corners: tuple[int, int, int], size: int = 4) -> np.ndarray:
    """A mask of `size`³ cubes, one at each corner (lowest index on every axis)."""
    mask = np.zeros(SHAPE, bool)
    for x, y, z in corners:
        mask[x : x + size, y : y + size, z : z + size] = True
    return mask


def test_one_lesion_found_one_missed_and_one_false_positive():
    found, missed, false_positive = (4, 4, 4), (20, 4, 4), (20, 20, 20)
    scores = region_scores(cubes(found, false_positive), cubes(found, missed), ISOTROPIC)

    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (1, 1, 1)
    assert scores.lesion_dice == pytest.approx((1 + 0 + 0) / 3)
    assert scores.lesion_hd95 == pytest.approx((0 + WORST_HD95_MM + WORST_HD95_MM) / 3)
    assert scores.dice == pytest.approx(0.5)  # 64 of 128 voxels on either side overlap


def test_a_shifted_lesion_scores_its_dice_and_hd95_in_mm_with_anisotropic_voxels():
    # A 6³ cube shifted by 2 voxels of 2 mm along z: 4 of 6 slices overlap, and a quarter of the
    # surface voxels (each cube's face across z) lie 4 mm from the other's surface, none farther.
    reference = cubes((8, 8, 8), size=6)
    prediction = cubes((8, 8, 10), size=6)

    scores = region_scores(prediction, reference, (1.0, 1.0, 2.0))

    assert scores.dice == pytest.approx(2 / 3)
    assert scores.hd95 == pytest.approx(4.0)
    assert scores.lesion_dice == pytest.approx(2 / 3)
    assert scores.lesion_hd95 == pytest.approx(4.0)
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (1, 0, 0)
    assert region_scores(reference, prediction, (1.0, 1.0, 2.0)).hd95 == scores.hd95


def test_lesions_whose_dilations_touch_are_one_lesion():
    # A gap of 4 voxels: 3 dilations from either side overlap, so only A is predicted of one
    # lesion A ∪ B (Dice 2·64 / (64 + 128)), not one lesion of two found ((1 + 0) / 2).
    near = cubes((4, 4, 4), (12, 4, 4))
    found = cubes((4, 4, 4))

    merged = region_scores(found, near, ISOTROPIC)
    assert (merged.true_positives, merged.false_negatives, merged.false_positives) == (1, 0, 0)
    assert merged.lesion_dice == pytest.approx(2 / 3)

    # One dilation from either side leaves a gap: two lesions, the second missed.
    apart = region_scores(found, near, ISOTROPIC, dilation_iterations=1)
    assert (apart.true_positives, apart.false_negatives) == (1, 1)
    assert apart.lesion_dice == pytest.approx(0.5)
    assert apart.lesion_hd95 == pytest.approx(WORST_HD95_MM / 2)


def test_lesions_of_50_mm3_or_less_are_left_out_and_their_matches_are_no_false_positives():
    large, small = (4, 4, 4), (20, 20, 20)
    reference = cubes(large) | cubes(small, size=3)  # the small one: 27 voxels

    missed_small = region_scores(cubes(large), reference, ISOTROPIC)  # 27 mm³: left out
    assert (missed_small.lesion_dice, missed_small.lesion_hd95) == (1.0, 0.0)
    assert missed_small.false_negatives == 0

    found_small = region_scores(reference, reference, ISOTROPIC)
    assert found_small.false_positives == 0
    assert (found_small.lesion_dice, found_small.true_positives) == (1.0, 1)


def test_the_volume_threshold_is_in_mm3_not_voxels():
    large, small = (4, 4, 4), (20, 20, 20)
    # 27 voxels of 2 mm³ are 54 mm³: kept, so missing them counts.
    reference = cubes(large) | cubes(small, size=3)
    scores = region_scores(cubes(large), reference, (1.0, 1.0, 2.0))
    assert scores.false_negatives == 1
    assert scores.lesion_dice == pytest.approx(0.5)

    # 64 voxels of 0.25 mm³ are 16 mm³: left out although more than 50 voxels.
    fine = region_scores(np.zeros(SHAPE, bool), cubes(small), (0.5, 0.5, 1.0))
    assert (fine.lesion_dice, fine.lesion_hd95, fine.false_negatives) == (1.0, 0.0, 0)
    assert (fine.dice, fine.hd95) == (0.0, WORST_HD95_MM)  # the legacy scores count every voxel


def test_an_empty_reference_predicted_empty_scores_perfectly():
    empty = np.zeros(SHAPE, bool)
    scores = region_scores(empty, empty, ISOTROPIC)
    assert (scores.dice, scores.hd95) == (1.0, 0.0)
    assert (scores.lesion_dice, scores.lesion_hd95) == (1.0, 0.0)


def test_a_prediction_of_an_empty_reference_is_one_false_positive():
    scores = region_scores(cubes((4, 4, 4)), np.zeros(SHAPE, bool), ISOTROPIC)
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (0, 0, 1)
    assert (scores.lesion_dice, scores.lesion_hd95) == (0.0, WORST_HD95_MM)  # 0 / (0 + 1)
    assert (scores.dice, scores.hd95) == (0.0, WORST_HD95_MM)


def tumour_label_map(enhancing: int, core: int = 1, edema: int = 2) -> np.ndarray:
    """Edema in a 12³ cube around a core cube and an enhancing cube (4³ each)."""
    label_map = np.zeros(SHAPE, np.uint8)
    label_map[cubes((8, 8, 8), size=12)] = edema
    label_map[cubes((10, 10, 10))] = core
    label_map[cubes((14, 14, 14))] = enhancing
    return label_map


@pytest.mark.parametrize(("release", "enhancing"), [("brats2021", 4), ("brats2023", 3)])
def test_regions_come_from_the_release_label_values(release, enhancing):
    reference = tumour_label_map(enhancing)
    prediction = reference.copy()
    prediction[prediction == enhancing] = 1  # the enhancing tumour taken for core

    scores = case_scores(prediction, reference, release, ISOTROPIC)

    assert list(scores) == ["TC", "WT", "ET"]
    for unchanged in ("TC", "WT"):  # TC = core ∪ enhancing, WT = all three
        assert (scores[unchanged].dice, scores[unchanged].lesion_dice) == (1.0, 1.0)
    assert scores["ET"].false_negatives == 1
    assert (scores["ET"].dice, scores["ET"].lesion_dice) == (0.0, 0.0)


def test_label_values_of_another_release_name_the_file():
    brats2023_map = tumour_label_map(enhancing=3)
    with pytest.raises(DataError, match=r"case_seg\.nii\.gz.*brats2021"):
        case_scores(
            brats2023_map, brats2023_map, "brats2021", ISOTROPIC, prediction_file="case_seg.nii.gz"
        )
