"""One network for a tumour's regions and its grade: a ResNeXt UNet with a classification head
on its encoder's deepest feature map, both computed in one forward pass (the encoder runs once).

:class:`GradingResNeXtUNet` is the network (what a run's ``config.yaml`` records);
:class:`PlannedGradingResNeXtUNet` plans it for the patch and spacing as
:class:`~resnext3d.models.PlannedResNeXtUNet` plans the UNet alone (:func:`plan_grading_unet`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Pool

from resnext3d.models.construction import records_init_args
from resnext3d.models.decoder import ResNeXtUNet, check_divisible
from resnext3d.models.planning import build_network, plan_unet
from resnext3d.models.resnext import ResNeXtFeatures

GRADING_UNET_CLASS_PATH = "resnext3d.models.GradingResNeXtUNet"


class RegionsAndGrade(NamedTuple):
    """What :class:`GradingResNeXtUNet` returns: ``regions``, the UNet's logits (B, regions,
    *spatial), or its deep-supervision stack in training, as :class:`ResNeXtUNet` returns them;
    ``grade``, the classification logits (B, grades)."""

    regions: torch.Tensor
    grade: torch.Tensor


@records_init_args
class GradingResNeXtUNet(ResNeXtUNet):
    """A :class:`ResNeXtUNet` that also grades its input: global average pooling, dropout and a
    linear layer on the encoder's deepest feature map.

    Args:
        encoder: as :class:`ResNeXtUNet`'s.
        out_channels: the region logits, e.g. 3 for TC, WT, ET.
        num_grades: the classes of the grade head, e.g. 2 for LGG and HGG.
        grade_drop_rate: dropout before the grade head's linear layer.
        **unet_arguments: the other arguments of :class:`ResNeXtUNet`.

    ``forward`` returns :class:`RegionsAndGrade`; :meth:`grade` runs the encoder and the grade
    head only (a run that trains the grade alone skips the decoder).
    """

    def __init__(
        self,
        encoder: ResNeXtFeatures,
        out_channels: int = 3,
        num_grades: int = 2,
        grade_drop_rate: float = 0.0,
        **unet_arguments,
    ) -> None:
        super().__init__(encoder, out_channels, **unet_arguments)
        self.num_grades = num_grades
        self.grade_head = nn.Sequential(
            Pool[Pool.ADAPTIVEAVG, encoder.spatial_dims](1),
            nn.Flatten(1),
            nn.Dropout(grade_drop_rate),
            nn.Linear(encoder.feature_info.channels()[-1], num_grades),
        )

    def forward(self, x: torch.Tensor) -> RegionsAndGrade:
        check_divisible(x.shape[2:], self.total_stride)
        features = self.encoder(x)  # once, for the decoder and the grade head
        return RegionsAndGrade(self.decode(x, features), self.grade_head(features[-1]))

    def grade(self, x: torch.Tensor) -> torch.Tensor:
        """The grade logits (B, grades) alone, without decoding the regions."""
        return self.grade_head(self.encoder(x)[-1])


def plan_grading_unet(
    num_grades: int = 2, grade_drop_rate: float = 0.0, **plan_arguments
) -> dict[str, Any]:
    """The plan of a :class:`GradingResNeXtUNet`: :func:`plan_unet`'s (`plan_arguments`) with
    the grade head's arguments; :func:`build_network` builds it."""
    plan = plan_unet(**plan_arguments)
    init_args = {**plan["init_args"], "num_grades": num_grades, "grade_drop_rate": grade_drop_rate}
    return {"class_path": GRADING_UNET_CLASS_PATH, "init_args": init_args}


class PlannedGradingResNeXtUNet(GradingResNeXtUNet):
    """The :class:`GradingResNeXtUNet` that :func:`plan_grading_unet` plans, in one call: a
    run's request, as :class:`~resnext3d.models.PlannedResNeXtUNet` is, which the CLI replaces
    in the run's ``config.yaml`` by ``self.plan``.

    Args:
        num_grades, grade_drop_rate: as :class:`GradingResNeXtUNet`'s.
        **plan_arguments: :func:`~resnext3d.models.plan_unet`'s (preset, patch_size, spacing,
            in_channels, out_channels, layers, cardinality, norm, ...).
    """

    def __init__(self, num_grades: int = 2, grade_drop_rate: float = 0.0, **plan_arguments) -> None:
        plan = plan_grading_unet(num_grades, grade_drop_rate, **plan_arguments)
        init_args = dict(plan["init_args"])
        super().__init__(build_network(init_args.pop("encoder")), **init_args)
        self.plan = plan
