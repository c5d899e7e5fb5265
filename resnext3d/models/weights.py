"""Loading weights into a ResNeXt: checkpoints unwrapped, a family's key names mapped onto ours,
2D kernels inflated to 3D (as I3D), the stem adapted to another number of input channels and a
head of another size left out, with a :class:`LoadReport` of what was done to each tensor.

The rules, each applied only where the shapes call for it:

- ``module.`` prefixes (DataParallel/DDP) are stripped; a ``state_dict`` or ``model`` entry of a
  checkpoint dict is taken as the state dict.
- The weights' family (:mod:`resnext3d.models.families`: MedicalNet, 3D-ResNets-PyTorch,
  torchvision's video ResNets, ours) is detected or given; its key names become ours.
- A 2D kernel ``(out, in, kh, kw)`` loading into a 3D convolution gains the depth axis:
  ``mean`` repeats it over depth and divides by the depth (I3D: a depth-constant input gives the
  2D activations away from the borders); ``center`` puts it in the middle slice and zeros
  elsewhere (a depth-constant input gives exactly the 2D network's output).
- The stem convolution's input channels: 1 channel sums the source's, otherwise the source's are
  repeated cyclically and scaled by ``source / target`` so activations keep their scale.
- A head of the family's (``fc``, MedicalNet's ``conv_seg``) whose shape differs (another
  ``num_classes``), or that the model lacks (an encoder, ``num_classes=0``), is left out: the
  model's keeps its own initialisation.
- Strides and dilations do not show in weights: where the model's differ from those the
  family's weights were trained with, the report says so and a warning is logged.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from resnext3d.models.families import AUTO, FAMILIES, WeightFamily, resolve_family

log = logging.getLogger(__name__)

Inflation = Literal["center", "mean"]
# Batch-norm counters: weights saved before PyTorch 0.4.1 lack them, and they teach nothing.
COUNTER_SUFFIX = "num_batches_tracked"


@dataclass
class LoadReport:
    """What loading weights did to each of the model's tensors (our key names).

    Attributes:
        source: the weight file, or ``"a state dict"``.
        family: the weights' family (:data:`resnext3d.models.families.FAMILIES`).
        family_from: how the family was chosen (given, or detected from what).
        loaded: keys loaded as they were.
        adapted: keys loaded after a change, with the change (2D kernels inflated, the stem's
            input channels adapted).
        left_at_init: the model's keys the weights did not give, at the model's initialisation
            (a head of another size).
        unused: the weights' keys, in their own names, that nothing took (a head of another
            size or that the model lacks).
        geometry_differences: where the model's strides and dilations differ from those the
            weights were trained with.
    """

    source: str
    family: str
    family_from: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    left_at_init: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    geometry_differences: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.adapted) + len(self.left_at_init)
        lines = [
            f"Loaded {len(self.loaded) + len(self.adapted)} of the model's {total} tensors from "
            f"{self.source} (family {self.family}, {self.family_from})"
        ]
        lines += [f"  adapted {key}: {why}" for key, why in self.adapted.items()]
        if self.left_at_init:
            lines.append(f"  left at initialisation: {', '.join(self.left_at_init)}")
        if self.unused:
            lines.append(f"  unused from the weights: {_abbreviate(self.unused)}")
        lines += [f"  geometry: {difference}" for difference in self.geometry_differences]
        return "\n".join(lines)


def _abbreviate(keys: list[str], shown: int = 6) -> str:
    more = f" … ({len(keys)} in all)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, loaded safely (``weights_only``), unwrapped and unprefixed; a
    ``.safetensors`` file or a folder written by :func:`resnext3d.models.save_pretrained` too."""
    if os.path.isdir(path) or str(path).endswith(".safetensors"):
        from resnext3d.models.hub import read_weights

        return read_weights(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable PyTorch weight file ({error})") from error
    for key in ("state_dict", "model"):
        if isinstance(content, Mapping) and isinstance(content.get(key), Mapping):
            content = content[key]
    if not isinstance(content, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in content.values()
    ):
        raise ValueError(f"{path}: holds no state dict of tensors")
    return strip_prefix(content, "module.")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def inflate_kernel(
    weight: torch.Tensor, depth: int, mode: Inflation = "center", depth_axis: int = 0
) -> torch.Tensor:
    """A 2D kernel ``(out, in, kh, kw)`` as a 3D one with ``depth`` taps on spatial ``depth_axis``.

    ``depth_axis`` 0 is PyTorch's ``(D, H, W)``; pass 2 for MONAI's ``(H, W, D)`` volumes.
    """
    dim = 2 + depth_axis
    if mode == "mean":
        return weight.unsqueeze(dim).repeat_interleave(depth, dim=dim) / depth
    if mode == "center":
        shape = list(weight.shape)
        shape.insert(dim, depth)
        inflated = weight.new_zeros(shape)
        inflated.select(dim, depth // 2).copy_(weight)
        return inflated
    raise ValueError(f"inflation must be 'center' or 'mean', got {mode!r}")


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The stem kernel for ``in_channels`` inputs (rule in the module docstring): a 1-channel
    kernel repeated over 4 channels and scaled by 1/4 gives, on 4 equal channels, the source's
    output on one."""
    source = weight.shape[1]
    if source == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / source)
    tiled = weight.repeat(1, repeats, *[1] * (weight.ndim - 2))
    return tiled[:, :in_channels] * (source / in_channels)


def _channel_rule(source: int, target: int) -> str:
    if target == 1:
        return "summed"
    if source == 1:
        return f"repeated, scaled by 1/{target}"
    return f"repeated cyclically, scaled by {source}/{target}"


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    inflation: Inflation = "center",
    depth_axis: int = 0,
    heads: tuple[str, ...] = ("fc.",),
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state_dict`` (in our key names) made to fit ``model`` by the rules of this module, and
    what was changed in each adapted tensor. Keys under ``heads`` that do not fit are left out."""
    target = model.state_dict()
    stem_key = f"{getattr(model, 'first_conv', 'conv1')}.weight"
    converted, adapted = {}, {}
    for key, value in state_dict.items():
        expected = target.get(key)
        if key.startswith(heads) and (expected is None or expected.shape != value.shape):
            continue
        if expected is None:
            converted[key] = value
            continue
        changes = []
        if value.ndim == 4 and expected.ndim == 5:
            value = inflate_kernel(value, expected.shape[2 + depth_axis], inflation, depth_axis)
            changes.append(f"2D kernel inflated to 3D ({inflation})")
        if key == stem_key and value.shape[1] != expected.shape[1]:
            rule = _channel_rule(value.shape[1], expected.shape[1])
            changes.append(f"{value.shape[1]} → {expected.shape[1]} input channels ({rule})")
            value = adapt_input_channels(value, expected.shape[1])
        if value.shape != expected.shape:
            raise ValueError(
                f"{key}: weights of shape {tuple(value.shape)} do not fit the model's "
                f"{tuple(expected.shape)}; check the preset, cardinality and base_width"
            )
        converted[key] = value
        if changes:
            adapted[key] = "; ".join(changes)
    return converted, adapted


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    inflation: Inflation = "center",
    depth_axis: int = 0,
    strict: bool = True,
    family: str = AUTO,
) -> LoadReport:
    """Load a weight file or state dict into ``model`` and report what was done (logged too).

    Args:
        source: a weight file (a checkpoint dict holding ``state_dict`` or ``model`` works) or
            a state dict.
        inflation: how 2D kernels become 3D (module docstring).
        depth_axis: the spatial axis 2D kernels are inflated along (2 for MONAI's H, W, D).
        strict: every key, but a head left out, must match both ways.
        family: the weights' family (:data:`resnext3d.models.families.FAMILIES`), or
            ``"auto"`` to tell it from the keys and the model's geometry.
    """
    name = str(source) if not isinstance(source, Mapping) else "a state dict"
    state_dict = strip_prefix(
        read_state_dict(source) if not isinstance(source, Mapping) else source, "module."
    )
    chosen, family_from = resolve_family(family, state_dict, model)
    renamed = {chosen.rename(key): key for key in state_dict}
    try:
        converted, adapted = convert_state_dict(
            {key: state_dict[original] for key, original in renamed.items()},
            model,
            inflation,
            depth_axis,
            chosen.heads,
        )
    except ValueError as error:
        raise ValueError(f"{name}: {error}{_family_hint(chosen, family_from)}") from error
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.startswith(chosen.heads)]
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"weights from {name} (family {chosen.name}, {family_from}) do not match the "
            f"model: missing {missing[:10]}, unexpected {unexpected[:10]}"
            f"{_shortcut_hint(missing, unexpected)}{_family_hint(chosen, family_from)}"
        )
    taken = set(converted) - set(unexpected)
    report = LoadReport(
        source=name,
        family=chosen.name,
        family_from=family_from,
        loaded=_without_counters(key for key in converted if key in taken and key not in adapted),
        adapted=adapted,
        left_at_init=_without_counters(key for key in model.state_dict() if key not in taken),
        unused=_without_counters(original for key, original in renamed.items() if key not in taken),
        geometry_differences=chosen.geometry_differences(model),
    )
    log.info("%s", report)
    for difference in report.geometry_differences:
        log.warning("%s: the model's %s", name, difference)
    return report


def _without_counters(keys) -> list[str]:
    return [key for key in keys if not key.endswith(COUNTER_SUFFIX)]


def _shortcut_hint(missing: list[str], unexpected: list[str]) -> str:
    if any(".downsample." in key for key in missing):
        return (
            "; the weights have no projection shortcuts (downsample): they use zero-padding "
            "ones, build the model with shortcut='zero_pad'"
        )
    if any(".downsample." in key for key in unexpected):
        return "; the weights have projection shortcuts: build the model with shortcut='projection'"
    return ""


def _family_hint(family: WeightFamily, family_from: str) -> str:
    presets = family.presets()
    hint = f" (family {family.name}, {family_from}: {family.source}"
    if presets:
        hint += f"; its architecture is built by the presets {', '.join(presets)}"
    others = [name for name in FAMILIES if name != family.name]
    return hint + f"; other families: {', '.join(others)})"
