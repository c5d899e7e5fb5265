"""The validation and test metric scores each case as the challenge does: legacy and lesion-wise
Dice and HD95, per region, averaged over cases."""

import math

import pytest
import torch

from resnext3d.evaluation import WORST_HD95_MM, region_scores
from resnext3d.tasks.region_metrics import RegionMetrics


def cube(corner: tuple[int, int, int], size: int = 6, shape: int = 24) -> torch.Tensor:
    volume = torch.zeros(shape, shape, shape)
    x, y, z = corner
    volume[x : x + size, y : y + size, z : z + size] = 1
    return volume


def test_lesion_wise_scores_are_those_of_each_case_averaged():
    found, missed = cube((2, 2, 2)), cube((14, 14, 14))
    stray = cube((2, 16, 2), size=4)
    # Case 0: region 0 has two lesions, one found and one missed, and a false positive; region 1
    # is found exactly. Case 1: both regions found exactly.
    targets = torch.stack(
        [torch.stack([found + missed, found]), torch.stack([missed, found])]
    )  # (cases, regions, x, y, z)
    masks = torch.stack([torch.stack([found + stray, found]), torch.stack([missed, found])])
    spacing = [2.0, 2.0, 2.0]
    metrics = RegionMetrics(["TC", "WT"])
    metrics.update(masks, targets, spacing)
    values = metrics.compute()

    expected = region_scores(masks[0, 0].numpy(), targets[0, 0].numpy(), spacing)
    assert expected.lesion_dice == pytest.approx(1 / 3)
    assert expected.lesion_hd95 == pytest.approx(2 * WORST_HD95_MM / 3)
    assert values["lesion_dice_tc"].item() == pytest.approx((1 / 3 + 1) / 2)
    assert values["lesion_hd95_tc"].item() == pytest.approx(WORST_HD95_MM / 3)
    assert values["lesion_dice_wt"].item() == pytest.approx(1.0)
    # Each case's mean over regions, then the mean over cases.
    assert values["lesion_dice_mean"].item() == pytest.approx(((1 / 3 + 1) / 2 + 1) / 2)
    # The legacy Dice of the same region, for comparison: the whole region, lesions pooled.
    assert values["dice_tc"].item() == pytest.approx((2 * 216 / (280 + 432) + 1) / 2)


def test_an_empty_region_predicted_empty_scores_one_lesion_wise_and_nan_legacy_hd95():
    empty = torch.zeros(1, 1, 16, 16, 16)
    metrics = RegionMetrics(["ET"])
    metrics.update(empty, empty, None)
    values = metrics.compute()
    assert values["lesion_dice_et"].item() == 1.0 and values["lesion_hd95_et"].item() == 0.0
    assert values["dice_et"].item() == 1.0 and math.isnan(values["hd95_et"].item())


def test_legacy_hd95_is_of_the_whole_region_in_mm():
    first, second = cube((3, 3, 3), size=8, shape=32), cube((22, 22, 22), size=8, shape=32)
    target = (first + second)[None, None]
    mask = cube((3, 3, 4), size=8, shape=32)[None, None]  # one lesion a 3-mm voxel off, one missed
    metrics = RegionMetrics(["WT"])
    metrics.update(mask, target, [1.0, 1.0, 3.0])
    values = metrics.compute()
    # Half the reference's surface, the missed lesion's, lies over 11 × √2 mm from the prediction.
    assert values["hd95_wt"].item() > 11 * math.sqrt(2)
    assert values["lesion_hd95_wt"].item() == pytest.approx((3.0 + WORST_HD95_MM) / 2)


def test_slices_are_scored_with_2d_neighbourhoods():
    target = torch.zeros(1, 1, 32, 32)
    target[0, 0, 2:10, 2:10] = 1
    target[0, 0, 20:28, 20:28] = 1  # a second lesion, far from the first: missed
    mask = torch.zeros_like(target)
    mask[0, 0, 2:10, 2:10] = 1
    metrics = RegionMetrics(["WT"])
    metrics.update(mask, target, [1.0, 1.0])
    values = metrics.compute()
    assert values["lesion_dice_wt"].item() == pytest.approx(0.5)
    assert values["dice_wt"].item() == pytest.approx(2 * 64 / (64 + 128))
