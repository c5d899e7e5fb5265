"""How fast this machine runs the convolutions ResNeXt is made of: the GFLOP/s of a dense and a
grouped 3×3×3 Conv3d (the issue's 4×256×16³ maps, and every grouped convolution of
resnext50_32x4d at the benchmark's input), in float32 and bf16, channels-last and contiguous,
forward and forward + backward. A network's train step is then read as a fraction of them: how
far it is from what the hardware does with the same kind of work.

FLOPs are the project's: ``count_macs`` × 2 forward, × 3 with the input and weight gradients
(``measure.train_flops``). ``python -m benchmarks.conv_rates`` prints the rate tables alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from benchmarks.measure import PeakMemory, Schedule, bench_device, time_steps, train_flops
from resnext3d.models import count_macs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ConvCase:
    """A 3×3×3 Conv3d with as many output as input channels, on `batch` maps of `size`³."""

    label: str
    batch: int
    channels: int
    size: int
    groups: int
    stride: int = 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.channels, self.size, self.size, self.size)

    @property
    def group_width(self) -> int:
        return self.channels // self.groups

    def build(self) -> nn.Conv3d:
        return nn.Conv3d(
            self.channels,
            self.channels,
            3,
            stride=self.stride,
            padding=1,
            groups=self.groups,
            bias=False,
        )


@dataclass(frozen=True)
class ConvSetting:
    """The number format and memory format a convolution computes in."""

    dtype: str  # a DTYPES key
    channels_last: bool

    @property
    def name(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.dtype} {layout}"


def issue_cases(batch: int, channels: int, size: int, groups: int) -> list[ConvCase]:
    """A dense convolution and a grouped one of the same shape: the issue's pair."""
    return [
        ConvCase("dense (groups 1)", batch, channels, size, 1),
        ConvCase(
            f"grouped ({groups} groups of {channels // groups})", batch, channels, size, groups
        ),
    ]


def grouped_cases_of(model: nn.Module, input_shape: Sequence[int]) -> list[ConvCase]:
    """Every distinct grouped 3×3×3 convolution a forward pass of `model` runs, with the maps it
    sees. Build `model` under ``torch.device("meta")``: the pass then costs no memory or time."""
    seen: dict[ConvCase, None] = {}

    def record(module: nn.Conv3d, inputs: tuple[torch.Tensor, ...]) -> None:
        batch, channels, *spatial = inputs[0].shape
        if len(set(spatial)) != 1 or len(set(module.stride)) != 1:
            raise ValueError(f"{module}: only cubic maps and isotropic strides are measured")
        width = channels // module.groups
        label = f"{module.groups}×{width}d, {channels} ch at {spatial[0]}³"
        if module.stride[0] > 1:
            label += f", stride {module.stride[0]}"
        case = ConvCase(label, batch, channels, spatial[0], module.groups, module.stride[0])
        seen[case] = None

    hooks = [
        module.register_forward_pre_hook(record)
        for module in model.modules()
        if isinstance(module, nn.Conv3d)
        and module.groups > 1
        and module.kernel_size == (3, 3, 3)
        and module.in_channels == module.out_channels
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return list(seen)


def conv_settings(bf16: bool) -> list[ConvSetting]:
    """float32 and, where the device computes it natively, bf16; each in both memory formats."""
    dtypes = ["float32", "bfloat16"] if bf16 else ["float32"]
    return [
        ConvSetting(dtype, channels_last) for dtype in dtypes for channels_last in (True, False)
    ]


def measure_conv(case: ConvCase, setting: ConvSetting, schedule: Schedule) -> dict:
    """GFLOP/s of `case` in `setting`: forward alone (no autograd), and forward with the input
    and weight gradients, which is what a train step asks of it."""
    torch.manual_seed(0)
    device = bench_device()
    dtype = DTYPES[setting.dtype]
    memory_format = torch.channels_last_3d if setting.channels_last else torch.contiguous_format
    conv = case.build().to(device=device, dtype=dtype, memory_format=memory_format)
    inputs = torch.randn(*case.input_shape, device=device, dtype=dtype)
    inputs = inputs.contiguous(memory_format=memory_format)
    with torch.device("meta"):
        macs = count_macs(case.build(), case.input_shape)
    with torch.no_grad():
        output_grad = torch.randn_like(conv(inputs))
    inputs.requires_grad_(True)

    def forward() -> None:
        with torch.no_grad():
            conv(inputs)

    def forward_backward() -> None:
        conv.weight.grad = None
        inputs.grad = None
        conv(inputs).backward(output_grad)

    memory = PeakMemory(device)
    forward_s = median_step_s(time_steps(forward, schedule, memory))
    train_s = median_step_s(time_steps(forward_backward, schedule, memory))
    return {
        "macs": macs,
        "forward_gflops_per_s": 2 * macs / forward_s / 1e9,
        "train_gflops_per_s": train_flops(macs) / train_s / 1e9,
    }


def median_step_s(timing: dict) -> float:
    return statistics.median(timing["step_s"])


def measure_rates(
    cases: Sequence[ConvCase], settings: Sequence[ConvSetting], schedule: Schedule
) -> dict:
    """Every case in every setting, in one process: the cases are small, and the order (each
    case through every setting before the next) keeps the settings of a case side by side in
    time, so that a slow spell of the machine falls on a whole row rather than on one column."""
    return {
        "rates": [
            {
                "case": asdict(case),
                "setting": asdict(setting),
                **measure_conv(case, setting, schedule),
            }
            for case in cases
            for setting in settings
        ]
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The rate tables alone, as `make bench` prints them, without the models around them."""
    from benchmarks.measure import OtherProcessesCpu, describe_machine
    from benchmarks.report import print_conv_rates
    from benchmarks.suites import OURS_DEFAULT, Settings, build_model, device_runs_bf16_natively

    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_rates", description=__doc__)
    parser.add_argument("--batch", type=int, default=Settings.batch, help="of the network's input")
    parser.add_argument("--size", type=int, default=Settings.size, help="of the network's input")
    args = parser.parse_args(argv)
    settings = Settings(batch=args.batch, size=args.size)
    machine = describe_machine()
    print(
        f"# Conv3d rates: {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{' '.join(machine['cpu_flags'])}; torch {machine['torch']}; {machine['date']}"
    )
    with torch.device("meta"):
        network = build_model(OURS_DEFAULT)
    cases = issue_cases(
        settings.conv_batch, settings.conv_channels, settings.conv_size, settings.conv_groups
    )
    cases += grouped_cases_of(network, settings.input_shape)
    with OtherProcessesCpu() as others:
        measured = measure_rates(
            cases, conv_settings(device_runs_bf16_natively(bench_device())), settings.conv_schedule
        )
    print_conv_rates(
        {
            **measured,
            "dense": cases[0].label,
            "grouped": cases[1].label,
            "other_processes_cpu_share": others.share,
        }
    )
    print(f"\nOther processes used {100 * others.share:.0f}% of the CPUs meanwhile.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
