"""Several trained networks of one architecture as one: the mean of their probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Probabilities = Literal["sigmoid", "softmax"]


class ProbabilityEnsemble(nn.Module):
    """Runs each member on the input, one after the other (only one member's activations are in
    memory at a time), and returns the logits of the mean of their probabilities: a task that
    applies the sigmoid or softmax to its network's output, thresholds it and writes it, works
    on the ensemble unchanged.

    Probabilities are averaged, not logits, as nnU-Net averages its folds' softmax outputs: a
    member that is confidently wrong (a logit of -40 where the others say +2) moves the mean
    probability by at most 1/N, where it would outvote every other member in a mean of logits.

    The logits of the mean are computed in log space, finite wherever the members' logits are
    (a probability that rounds to 0 or 1 in float32 would give an infinite logit):

    - ``sigmoid`` (regions, each its own probability p): ``log(Σ pᵢ) - log(Σ (1 - pᵢ))``, the
      log-odds of the mean;
    - ``softmax`` (exclusive classes): ``log(Σ softmax(zᵢ) / N)``, whose softmax is the mean.

    Members are the task's networks in eval mode (validate, test, predict), where a network
    with deep supervision returns its final output only.

    Args:
        members: the networks, of one architecture, with their weights loaded.
        probabilities: how the task turns its network's output into probabilities.
    """

    def __init__(self, members: Sequence[nn.Module], probabilities: Probabilities) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.probabilities = probabilities
        first = members[0]
        # What the tasks read from their network.
        self.spatial_dims = getattr(first, "spatial_dims", 3)
        for attribute in ("out_channels", "num_classes"):
            if hasattr(first, attribute):
                setattr(self, attribute, getattr(first, attribute))
        self.deep_supervision = False

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Running log-sums, one member at a time: log Σ pᵢ (and log Σ (1 - pᵢ) for sigmoids).
        sums: tuple[torch.Tensor, ...] | None = None
        for member in self.members:
            logits = member(image).float()
            if self.probabilities == "softmax":
                terms = (F.log_softmax(logits, dim=1),)
            else:
                terms = (F.logsigmoid(logits), F.logsigmoid(-logits))
            sums = terms if sums is None else tuple(map(torch.logaddexp, sums, terms))
        if self.probabilities == "softmax":
            return sums[0] - math.log(len(self.members))
        return sums[0] - sums[1]  # the log-odds: the 1/N of both means cancels
