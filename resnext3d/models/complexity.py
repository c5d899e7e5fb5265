"""Model complexity: parameters, multiply-adds (MACs) and the paper's equal-complexity widths."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

# (C, d) of the paper's Table 2: conv2-stage blocks of about equal complexity in 2D.
PAPER_TABLE2 = ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4))
BLOCK_CHANNELS = 256  # input and output channels of a conv2-stage block


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass in eval mode of an input of ``input_shape`` (batch
    included): the convolutions' and matrix products', which is what the ResNeXt paper reports as
    FLOPs. PyTorch's ``FlopCounterMode`` counts two FLOPs per multiply-add.

    Build the model under ``torch.device("meta")`` to count a large one without memory or time.
    """
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def bottleneck_parameters(
    cardinality: int, width: int, spatial_dims: int = 2, channels: int = BLOCK_CHANNELS
) -> int:
    """Parameters of a bottleneck with `channels` in and out: C paths of 1×1 (channels→d),
    3×…×3 (d→d), 1×1 (d→channels); ResNeXt's conv2-stage block by default."""
    kernel = 3**spatial_dims
    return cardinality * (channels * width + kernel * width * width + width * channels)


def equal_complexity_width(
    cardinality: int, budget: int, spatial_dims: int, channels: int = BLOCK_CHANNELS
) -> int:
    """The group width d whose block's parameter count is closest to ``budget`` for this C."""
    kernel = 3**spatial_dims
    # C * (2 channels d + k d^2) = budget, solved for the positive root, then the nearer integer.
    root = (-2 * channels + math.sqrt((2 * channels) ** 2 + 4 * kernel * budget / cardinality)) / (
        2 * kernel
    )
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(
        candidates,
        key=lambda d: abs(bottleneck_parameters(cardinality, d, spatial_dims, channels) - budget),
    )


def complexity_table(spatial_dims: int) -> list[dict]:
    """The paper's Table 2 in ``spatial_dims``, with the d that restores equal complexity.

    In 2D the paper's (C, d) pairs all cost about as much as the ResNet block (C=1, d=64). With
    3×3×3 kernels the d² term weighs 3× more, so the same pairs no longer match: each row also
    gives the width that matches the 3D ResNet block.
    """
    budget = bottleneck_parameters(1, 64, spatial_dims)
    rows = []
    for cardinality, width in PAPER_TABLE2:
        equal_width = equal_complexity_width(cardinality, budget, spatial_dims)
        rows.append(
            {
                "cardinality": cardinality,
                "width": width,
                "parameters": bottleneck_parameters(cardinality, width, spatial_dims),
                "equal_width": equal_width,
                "equal_parameters": bottleneck_parameters(cardinality, equal_width, spatial_dims),
                "reference": budget,
            }
        )
    return rows
