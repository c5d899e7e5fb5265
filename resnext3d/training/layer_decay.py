"""Layer-wise learning-rate decay for fine-tuning (BEiT; timm's ``param_groups_layer_decay``):
the deeper a layer, the larger its rate; the encoder's stem learns slowest, the head at the full
rate.

The layers are those of the network's ``group_matcher`` (timm's convention, e.g.
:meth:`resnext3d.models.ResNeXt.group_matcher`: the stem, then every block), numbered from the
input. The rule for a task's parameters:

- the network's own ``group_matcher`` where it has one (a ResNeXt classifier: its classifier,
  which the matcher leaves out, is the last layer);
- else that of the network's ``encoder`` (a UNet, a UNet with a grade head): everything outside
  the encoder, decoder and heads, is the last layer;
- any parameter of the task outside the network is in the last layer too.

With L layers, layer i (0 for the stem) learns at ``decay ** (L - 1 - i)`` times the optimizer's
rate. The scale is applied to each group's ``lr`` when the optimizer is built (and kept in the
group as ``lr_scale``), so PyTorch's schedulers and :class:`resnext3d.training.WarmupCosineLR`,
which scale each group's own initial rate, keep the ratios throughout the run. Weight decay stays
the optimizer's in every group (timm's function also exempts biases and norms, a separate
choice this leaves to the optimizer's config, as without layer decay).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

NETWORK_ATTRIBUTE = "network"


def layer_ids(names: Iterable[str], matcher: dict[str, str], prefix: str = "") -> dict[str, int]:
    """Each name's layer, from 0, by timm's ``group_with_matcher`` rule: a name under ``prefix``
    matching the i-th pattern of ``matcher`` sorts by (i, the numbers its groups capture); every
    other name sorts after all of them, into one last layer."""
    patterns = [re.compile(pattern) for pattern in matcher.values()]

    def ordinal(name: str) -> tuple[float, ...]:
        if name.startswith(prefix):
            for index, pattern in enumerate(patterns):
                found = pattern.match(name.removeprefix(prefix))
                if found:
                    return (index, *(float(g) for g in found.groups() if g is not None))
        return (math.inf,)

    ordinals = {name: ordinal(name) for name in names}
    ranks = {value: rank for rank, value in enumerate(sorted(set(ordinals.values())))}
    return {name: ranks[value] for name, value in ordinals.items()}


def decaying_module(task: nn.Module) -> tuple[nn.Module, str]:
    """The module whose ``group_matcher`` numbers a task's layers, and its parameters' prefix
    in the task's names (see the module's rule)."""
    network = getattr(task, NETWORK_ATTRIBUTE, None)
    if hasattr(network, "group_matcher"):
        return network, f"{NETWORK_ATTRIBUTE}."
    encoder = getattr(network, "encoder", None)
    if hasattr(encoder, "group_matcher"):
        return encoder, f"{NETWORK_ATTRIBUTE}.encoder."
    raise ValueError(
        f"layer_decay needs a network with a group_matcher (a ResNeXt) or an encoder with one "
        f"(a ResNeXt UNet); this task's network is a {type(network).__name__}"
    )


def layer_decay_groups(task: nn.Module, decay: float) -> list[dict[str, Any]]:
    """The task's parameters in one optimizer group per layer, each with its ``lr_scale``
    (``decay ** (L - 1 - layer)``), ``layer`` and ``param_names``, shallowest first."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}")
    module, prefix = decaying_module(task)
    named = dict(task.named_parameters())
    layers = layer_ids(named, module.group_matcher(coarse=False), prefix)
    last = max(layers.values())
    groups = [
        {"params": [], "param_names": [], "layer": layer, "lr_scale": decay ** (last - layer)}
        for layer in range(last + 1)
    ]
    for name, parameter in named.items():
        groups[layers[name]]["params"].append(parameter)
        groups[layers[name]]["param_names"].append(name)
    return groups


def scale_learning_rates(optimizer: Optimizer) -> None:
    """Each group's rate times its ``lr_scale``, before a scheduler takes them as its initial
    rates."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
