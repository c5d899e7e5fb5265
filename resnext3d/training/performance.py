"""Which precision and memory format train fastest, and correctly, on the device in use.

The defaults follow what ``make bench`` measured (figures in the README's "Speed and memory"):
on CPUs, ``channels_last_3d`` always, and ``bf16-mixed`` where the CPU has native bf16
instructions (AVX512_BF16 or AMX), without which bf16 convolutions are several to tens of times
slower than float32. The oneDNN in torch 2.13 computes wrong bf16 *weight gradients* for
convolutions whose input is smaller than the kernel along an axis (3×3×3 over 2×2×2 maps:
stage 4 of a 64³ crop; a sweep of kernels 1/3/7, strides 1/2, maps 1–8, dense and grouped, both
memory formats found no other case), which sent a bf16 brats_cls run to NaN;
:class:`TinyMapSafeConv3d` computes those few tiny convolutions in float32, where a probe finds
the bug. Both CPU traps are handled by one Lightning precision plugin,
:class:`CpuBf16MixedPrecision`, which the CLI trains CPU bf16-mixed runs with and any Trainer can
take. On CUDA, bf16-mixed (far less memory) and the contiguous format (channels-last was
slower on an H200: README) are the defaults.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
import torch.nn as nn
from lightning.pytorch.plugins import MixedPrecision

ChannelsLast = bool | Literal["auto"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512_BF16 or AMX on x86)."""
    capabilities = torch.cpu.get_capabilities()
    if capabilities.get("architecture") == "x86_64":
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.cache
def cpu_bf16_conv_gradients_are_correct() -> bool:
    """Whether bf16 weight gradients of a 3×3×3 convolution over a 2×2×2 map match float32's:
    the case the oneDNN in torch 2.13 gets wrong (relative error ~1 where bf16 rounding gives
    ~0.005). Asked once per process: the answer is the installed torch's."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(64, 64, 3, padding=1, bias=False)
    inputs = torch.randn(2, 64, 2, 2, 2, generator=generator)
    output_grad = torch.randn(2, 64, 2, 2, 2, generator=generator)
    weight_grads = []
    for bf16 in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = conv(inputs)
        (weight_grad,) = torch.autograd.grad(output, conv.weight, output_grad.to(output.dtype))
        weight_grads.append(weight_grad.float())
    bf16_grad, float32_grad = weight_grads
    error = (bf16_grad - float32_grad).abs().max() / float32_grad.abs().max()
    return bool(error < 0.05)


def default_precision(device_type: str) -> str:
    """The fastest correct Lightning precision for a device type ("cpu", "cuda", ...)."""
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


class TinyMapSafeConv3d(nn.Conv3d):
    """A Conv3d that, under CPU bf16 autocast, computes in float32 when its input is smaller
    than its kernel along an axis: oneDNN's bf16 weight gradients are wrong there (see
    :func:`cpu_bf16_conv_gradients_are_correct`). Such maps are tiny, so float32 costs little."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        tiny = any(
            size < kernel for size, kernel in zip(input.shape[2:], self.kernel_size, strict=True)
        )
        if tiny and input.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(input.float())
        return super().forward(input)


def guard_tiny_convolutions(network: nn.Module) -> None:
    """Make every Conv3d of `network` a :class:`TinyMapSafeConv3d`, in place: the same weights
    and state-dict keys."""
    for module in network.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = TinyMapSafeConv3d


class CpuBf16MixedPrecision(MixedPrecision):
    """Lightning's bf16-mixed on CPU, with the CPU's bf16 traps handled when the trainer sets the
    module up (``convert_module``, where Lightning's bitsandbytes and Transformer Engine plugins
    swap layers too): a warning on CPUs without native bf16, and every Conv3d a
    :class:`TinyMapSafeConv3d` where the probe finds oneDNN's wrong gradients. Any
    LightningModule gets them with ``L.Trainer(accelerator="cpu",
    plugins=[CpuBf16MixedPrecision()])`` (the Trainer's ``precision`` left unset); the CLI
    chooses it for CPU bf16-mixed runs (:func:`precision_plugin`)."""

    def __init__(self) -> None:
        super().__init__("bf16-mixed", "cpu")

    def convert_module(self, module: nn.Module) -> nn.Module:
        warn_if_slow_precision(self.precision, torch.device("cpu"))
        if not cpu_bf16_conv_gradients_are_correct():
            guard_tiny_convolutions(module)
        return module


def precision_plugin(precision: str | int | None, device_type: str | None) -> MixedPrecision | None:
    """The plugin that trains in `precision` on `device_type` ("cpu", "cuda" or None, as
    :func:`accelerator_device_type` names it): :class:`CpuBf16MixedPrecision` for bf16-mixed
    on CPU; None leaves the precision to Lightning."""
    if device_type == "cpu" and str(precision) in ("bf16-mixed", "bf16"):
        return CpuBf16MixedPrecision()
    return None


def accelerator_device_type(accelerator: object) -> str | None:
    """The device type a Trainer's ``accelerator`` argument selects, None when not "cpu" or
    "cuda" (other accelerators keep Lightning's own defaults)."""
    if not isinstance(accelerator, str):
        return None
    accelerator = accelerator.lower()
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("auto", "cpu"):
        return "cpu"
    return None


def uses_channels_last(setting: ChannelsLast, device: torch.device) -> bool:
    """``"auto"``: channels-last on CPU, where it was measured faster; contiguous elsewhere."""
    if setting == "auto":
        return device.type == "cpu"
    return setting


def memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def warn_if_slow_precision(precision: str, device: torch.device) -> None:
    if device.type == "cpu" and precision.startswith("bf16") and not cpu_has_native_bf16():
        warnings.warn(
            f"precision {precision!r} on a CPU without native bfloat16 (AVX512_BF16 or AMX): "
            "3D convolutions in bf16 ran several to tens of times slower than in float32 when "
            "measured (README: Speed and memory); use --trainer.precision 32-true",
            stacklevel=2,
        )
