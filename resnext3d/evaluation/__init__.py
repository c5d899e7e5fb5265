"""Scoring segmentations as the BraTS challenge does: legacy and lesion-wise Dice and HD95."""

from resnext3d.evaluation.lesionwise import (
    GLIOMA_DILATION_ITERATIONS,
    MIN_LESION_MM3,
    WORST_HD95_MM,
    RegionScores,
    case_scores,
    region_scores,
)

__all__ = [
    "GLIOMA_DILATION_ITERATIONS",
    "MIN_LESION_MM3",
    "WORST_HD95_MM",
    "RegionScores",
    "case_scores",
    "region_scores",
]
