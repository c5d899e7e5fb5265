"""Per-region Dice and HD95 of whole volumes, legacy and lesion-wise, as one torchmetrics
Metric."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from resnext3d.evaluation import (
    GLIOMA_DILATION_ITERATIONS,
    MIN_LESION_MM3,
    RegionScores,
    region_scores,
)

KINDS = ("dice", "hd95", "lesion_dice", "lesion_hd95")


class RegionMetrics(Metric):
    """Dice and the 95th-percentile Hausdorff distance (mm) of each region, per case, of the
    whole region (legacy) and lesion by lesion (the BraTS 2023 ranking metric:
    :mod:`resnext3d.evaluation.lesionwise`).

    Legacy Dice follows the BraTS convention (an empty region predicted empty scores 1); legacy
    HD95 is undefined, NaN, where the truth or the prediction is empty, and left out of every
    mean. Lesion-wise scores are always defined (a missed lesion or a false positive scores Dice
    0 and HD95 374 mm). ``compute`` returns ``dice_<region>``, ``hd95_<region>``,
    ``lesion_dice_<region>`` and ``lesion_hd95_<region>`` (means over cases) and
    ``dice_mean``, ``hd95_mean``, ``lesion_dice_mean``, ``lesion_hd95_mean`` (means over cases of
    each case's mean over regions). Cases are kept, not running sums, so a distributed run
    gathers every rank's cases once; :meth:`case_scores` gives each named case's scores as the
    challenge defines them (legacy HD95 374 mm where one side is empty, 0 where both are).

    Args:
        region_names: the regions in channel order, e.g. ``["TC", "WT", "ET"]``.
        lesion_dilation_iterations: how far apart (in dilations) lesions still count as one: 3
            for gliomas, as the challenge scores them.
        min_lesion_mm3: lesions this small or smaller are left out of the lesion-wise scores.
    """

    full_state_update = False

    def __init__(
        self,
        region_names: Sequence[str],
        lesion_dilation_iterations: int = GLIOMA_DILATION_ITERATIONS,
        min_lesion_mm3: float = MIN_LESION_MM3,
    ) -> None:
        super().__init__()
        self.region_names = [name.lower() for name in region_names]
        self.lesion_dilation_iterations = lesion_dilation_iterations
        self.min_lesion_mm3 = min_lesion_mm3
        for kind in KINDS:
            self.add_state(kind, default=[], dist_reduce_fx="cat")
        self._named_cases: list[tuple[str, list[RegionScores]]] = []

    def update(
        self,
        masks: torch.Tensor,
        targets: torch.Tensor,
        spacing: Sequence[float] | None,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        """`masks` and `targets`: (B, regions, *spatial) binary; `spacing`: mm per voxel;
        `case_ids`: the cases' names, to keep their scores for :meth:`case_scores`."""
        # One pass of the challenge's scoring per case and region gives both kinds of score.
        scores = [
            [
                region_scores(
                    mask.numpy(),
                    target.numpy(),
                    spacing or [1.0] * (masks.ndim - 2),
                    self.lesion_dilation_iterations,
                    self.min_lesion_mm3,
                )
                for mask, target in zip(case_masks, case_targets, strict=True)
            ]
            for case_masks, case_targets in zip(
                masks.bool().cpu(), targets.bool().cpu(), strict=True
            )
        ]
        if case_ids is not None:
            self._named_cases.extend(zip(case_ids, scores, strict=True))
        for kind in KINDS:
            values = [[getattr(region, kind) for region in case] for case in scores]
            getattr(self, kind).append(torch.tensor(values, device=masks.device))
        # The challenge scores an HD95 with an empty side as 374 mm (0 with both); here it is
        # undefined and left out of the means.
        empty = (masks.flatten(2).sum(-1) == 0) | (targets.flatten(2).sum(-1) == 0)
        self.hd95[-1][empty.to(self.hd95[-1].device)] = torch.nan

    def compute(self) -> dict[str, torch.Tensor]:
        values = {}
        for kind in KINDS:
            cases = dim_zero_cat(getattr(self, kind))  # (cases, regions)
            for channel, name in enumerate(self.region_names):
                values[f"{kind}_{name}"] = cases[:, channel].nanmean()
            values[f"{kind}_mean"] = cases.nanmean(dim=1).nanmean()
        return values

    def reset(self) -> None:
        super().reset()
        self._named_cases = []

    def case_scores(self) -> dict[str, dict[str, RegionScores]]:
        """Each named case's scores by region name, gathered from every rank (a collective call
        under DDP), once per case: distributed samplers repeat cases to even out the ranks."""
        named = self._named_cases
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, named)
            named = [case for rank in gathered for case in rank]
        return {
            case_id: dict(zip(self.region_names, scores, strict=True))
            for case_id, scores in sorted(named, key=lambda case: case[0])
        }
