"""Loading weights into a ResNeXt: checkpoints unwrapped, 2D kernels inflated to 3D (as I3D), the
stem adapted to another number of input channels and a classifier of another size left out.

The rules, each applied only where the shapes call for it:

- ``module.`` prefixes (DataParallel/DDP) are stripped; a ``state_dict`` or ``model`` entry of a
  checkpoint dict is taken as the state dict.
- A 2D kernel ``(out, in, kh, kw)`` loading into a 3D convolution gains the depth axis:
  ``mean`` repeats it over depth and divides by the depth (I3D: a depth-constant input gives the
  2D activations away from the borders); ``center`` puts it in the middle slice and zeros
  elsewhere (a depth-constant input gives exactly the 2D network's output).
- The stem convolution's input channels: 1 channel sums the source's, otherwise the source's are
  repeated cyclically and scaled by ``source / target`` so activations keep their scale.
- A classifier whose shape differs (another ``num_classes``), or that the model lacks
  (an encoder, ``num_classes=0``), is left at the model's own initialisation.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

Inflation = Literal["center", "mean"]
CLASSIFIER_PREFIX = "fc."


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
    """The stem kernel for ``in_channels`` inputs (rule in the module docstring)."""
    source = weight.shape[1]
    if source == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / source)
    tiled = weight.repeat(1, repeats, *[1] * (weight.ndim - 2))
    return tiled[:, :in_channels] * (source / in_channels)


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    inflation: Inflation = "center",
    depth_axis: int = 0,
) -> dict[str, torch.Tensor]:
    """``state_dict`` made to fit ``model`` by the rules of this module."""
    target = model.state_dict()
    stem_key = f"{getattr(model, 'first_conv', 'conv1')}.weight"
    converted = {}
    for key, value in state_dict.items():
        expected = target.get(key)
        if key.startswith(CLASSIFIER_PREFIX) and (
            expected is None or expected.shape != value.shape
        ):
            log.info("%s: the model's classifier differs, keeping its own initialisation", key)
            continue
        if expected is None:
            converted[key] = value
            continue
        if value.ndim == 4 and expected.ndim == 5:
            value = inflate_kernel(value, expected.shape[2 + depth_axis], inflation, depth_axis)
        if key == stem_key:
            value = adapt_input_channels(value, expected.shape[1])
        if value.shape != expected.shape:
            raise ValueError(
                f"{key}: weights of shape {tuple(value.shape)} do not fit the model's "
                f"{tuple(expected.shape)}; check the preset, cardinality and base_width"
            )
        converted[key] = value
    return converted


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    inflation: Inflation = "center",
    depth_axis: int = 0,
    strict: bool = True,
) -> None:
    """Load a weight file or state dict into ``model``; ``strict`` also covers converted keys.

    With ``strict``, every key but a left-out classifier must match both ways.
    """
    state_dict = read_state_dict(source) if not isinstance(source, Mapping) else source
    converted = convert_state_dict(
        strip_prefix(state_dict, "module."), model, inflation, depth_axis
    )
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.startswith(CLASSIFIER_PREFIX)]
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"weights from {source if not isinstance(source, Mapping) else 'a state dict'} "
            f"do not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
