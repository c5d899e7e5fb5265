"""Per-region Dice and HD95 of whole volumes, as one torchmetrics Metric."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class RegionMetrics(Metric):
    """Dice and the 95th-percentile Hausdorff distance (mm) of each region, per case.

    Dice follows the BraTS convention (an empty region predicted empty scores 1). HD95 is
    undefined, NaN, where the truth or the prediction is empty, and left out of every mean.
    ``compute`` returns ``dice_<region>`` and ``hd95_<region>`` (means over cases) and
    ``dice_mean``/``hd95_mean`` (means over cases of each case's mean over regions). Cases are
    kept, not running sums, so a distributed run gathers every rank's cases once.

    Args:
        region_names: the regions in channel order, e.g. ``["TC", "WT", "ET"]``.
    """

    full_state_update = False

    def __init__(self, region_names: Sequence[str]) -> None:
        super().__init__()
        self.region_names = [name.lower() for name in region_names]
        self.add_state("dice", default=[], dist_reduce_fx="cat")
        self.add_state("hd95", default=[], dist_reduce_fx="cat")

    def update(
        self, masks: torch.Tensor, targets: torch.Tensor, spacing: Sequence[float] | None
    ) -> None:
        """`masks` and `targets`: (B, regions, *spatial) binary; `spacing`: mm per voxel."""
        self.dice.append(compute_dice(masks, targets, include_background=True, ignore_empty=False))
        with warnings.catch_warnings():
            # MONAI warns of each empty region, which is what NaN stands for here, and of its
            # own deprecations.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            hd95 = compute_hausdorff_distance(
                masks, targets, percentile=95, include_background=True, spacing=spacing
            )
        self.hd95.append(torch.where(torch.isfinite(hd95), hd95, torch.nan).to(masks.device))

    def compute(self) -> dict[str, torch.Tensor]:
        values = {}
        for kind in ("dice", "hd95"):
            cases = dim_zero_cat(getattr(self, kind))  # (cases, regions)
            for channel, name in enumerate(self.region_names):
                values[f"{kind}_{name}"] = cases[:, channel].nanmean()
            values[f"{kind}_mean"] = cases.nanmean(dim=1).nanmean()
        return values
