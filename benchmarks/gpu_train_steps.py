"""Train-step time and peak memory on one CUDA GPU at real-BraTS sizes (128³): our ResNeXt
classifier and ResNeXt UNets in both memory formats and precisions, beside MONAI's SegResNet and an
nnU-Net-like DynUNet. A GPU-only companion of `make bench`, which sizes for the CPU.

    python -m benchmarks.gpu_train_steps   # prints one JSON line per row
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch
import torch.nn as nn
from monai.networks.nets import DynUNet, SegResNet

import resnext3d

WARMUP_STEPS, TIMED_STEPS = 3, 10


def train_step_seconds(
    model: nn.Module, shape: tuple[int, ...], channels_last: bool, dtype: torch.dtype | None
) -> tuple[float, float]:
    """Mean seconds of a forward, backward and fused AdamW step, and the peak memory in GiB."""
    device = torch.device("cuda")
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    inputs = torch.randn(*shape, device=device).contiguous(memory_format=memory_format)
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(inputs).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(WARMUP_STEPS):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / TIMED_STEPS, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    torch.backends.cudnn.benchmark = True
    print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}))
    classification, segmentation = (8, 4, 128, 128, 128), (2, 4, 128, 128, 128)
    rows: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], bool, torch.dtype | None]] = [
        ("resnext50_32x4d", lambda: resnext3d.create_model("resnext50_32x4d", in_channels=4,
         num_classes=2), classification, cl, dtype)
        for cl, dtype in ((False, torch.bfloat16), (True, torch.bfloat16), (False, None))
    ]  # fmt: skip
    rows += [
        ("ResNeXtUNet resnext50_32x4d", lambda: resnext3d.ResNeXtUNet(resnext3d.create_model(
         "resnext50_32x4d", in_channels=4, features_only=True), out_channels=3,
         upsample="nontrainable"), segmentation, cl, torch.bfloat16)
        for cl in (False, True)
    ]  # fmt: skip
    rows += [
        (f"PlannedResNeXtUNet {preset} (brats_seg_gpu.yaml)", lambda preset=preset:
         resnext3d.PlannedResNeXtUNet(preset, patch_size=(128,) * 3, spacing=(1.0,) * 3,
         deep_supervision=True), segmentation, False, torch.bfloat16)
        for preset in ("resnext_unet_s", "resnext_unet_m")
    ]  # fmt: skip
    rows += [
        ("SegResNet", lambda: SegResNet(3, 16, 4, 3, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)),
         segmentation, False, torch.bfloat16),
        ("DynUNet as nnU-Net plans 128³", lambda: DynUNet(3, 4, 3, kernel_size=[3] * 6,
         strides=[1, 2, 2, 2, 2, 2], upsample_kernel_size=[2] * 5,
         filters=[32, 64, 128, 256, 320, 320], norm_name="instance", res_block=True),
         segmentation, False, torch.bfloat16),
    ]  # fmt: skip
    for name, build, shape, channels_last, dtype in rows:
        seconds, peak = train_step_seconds(build(), shape, channels_last, dtype)
        print(json.dumps({
            "model": name, "batch": shape[0], "size": shape[2], "channels_last": channels_last,
            "precision": "bf16-mixed" if dtype else "32 (TF32 convolutions)",
            "step_s": round(seconds, 4), "volumes_per_s": round(shape[0] / seconds, 1),
            "peak_gib": round(peak, 2),
        }))  # fmt: skip
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
