"""Where a train step's time goes: torch.profiler's self time of every operator of one step,
summed by kind (grouped and dense convolutions keyed by their groups and kernel, norms,
elementwise, casts, the optimizer), and the GFLOP/s the grouped convolutions reach inside the
step.

A convolution's kind comes from its recorded input shapes: the weight's second dimension is the
input channels per group, so ``groups = input channels / weight.shape[1]``. Forward operators
(``mkldnn_convolution``, ``cudnn_convolution``, ...) take (input, weight, ...), the backward
operator (``convolution_backward``) takes (output gradient, input, weight, ...).
``python -m benchmarks.step_profile [--batch 2 --size 64]`` prints the profile alone.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

# Operator name fragments of each kind, first match wins; convolutions are told apart by shape.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch norm", ("batch_norm",)),
    ("casts and copies", ("copy_", "_to_copy", "clone", "contiguous")),
    ("optimizer", ("adam", "optimizer", "foreach", "zero_")),
    ("pooling", ("pool",)),
    ("elementwise", ("relu", "threshold", "add", "mul", "clamp", "fill_", "sum", "div")),
)
OTHER = "other"


def conv_kind(name: str, shapes: Sequence[Sequence[int]]) -> str | None:
    """A convolution's kind, e.g. "conv 3×3×3 grouped", "conv 1×1×1", "conv 7×7×7"; None where
    `name` is not a convolution or its shapes were not recorded."""
    if "conv" not in name:
        return None
    backward = "backward" in name
    input_index, weight_index = (1, 2) if backward else (0, 1)
    if len(shapes) <= weight_index or len(shapes[weight_index]) < 3:
        return None
    inputs, weight = shapes[input_index], shapes[weight_index]
    if len(inputs) < 2 or not weight[1]:
        return None
    kernel = "×".join(map(str, weight[2:]))
    groups = inputs[1] // weight[1]
    return f"conv {kernel} grouped" if groups > 1 else f"conv {kernel}"


def conv_train_macs(name: str, shapes: Sequence[Sequence[int]]) -> int:
    """The forward MACs of the convolution whose backward operator this is (0 for any other):
    the output gradient's elements × input channels per group × kernel volume. Taken from the
    backward operator because it alone records the output's shape."""
    if "convolution_backward" not in name or len(shapes) < 3:
        return 0
    output, weight = shapes[0], shapes[2]
    return math.prod(output) * weight[1] * math.prod(weight[2:])


def operator_kind(name: str, shapes: Sequence[Sequence[int]]) -> str:
    convolution = conv_kind(name, shapes)
    if convolution is not None:
        return convolution
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return OTHER


def shares_by_kind(events: Iterable[tuple[str, Sequence[Sequence[int]], float]]) -> dict:
    """Each kind's self time and share of the total from (operator name, input shapes, self
    seconds) triples, and the grouped convolutions' train GFLOP/s inside the step (forward and
    both gradients, as ``measure.train_flops`` counts)."""
    seconds: dict[str, float] = defaultdict(float)
    grouped_macs = 0
    for name, shapes, self_s in events:
        kind = operator_kind(name, shapes)
        seconds[kind] += self_s
        if kind.endswith("grouped"):
            grouped_macs += conv_train_macs(name, shapes)
    total = sum(seconds.values())
    grouped_s = sum(value for kind, value in seconds.items() if kind.endswith("grouped"))
    return {
        "total_s": total,
        "kinds": {
            kind: {"seconds": value, "share": value / total}
            for kind, value in sorted(seconds.items(), key=lambda item: -item[1])
        },
        "grouped_share": grouped_s / total if total else 0.0,
        "grouped_macs": grouped_macs,
        "grouped_gflops_per_s": 6 * grouped_macs / grouped_s / 1e9 if grouped_s else None,
    }


def profile_step(step: Callable[[], None], device: torch.device) -> dict:
    """One profiled call of `step` (already warmed up), its operators' self time by kind."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as profiler:
        step()
    # The device's own time where kernels run on one, the CPU's otherwise.
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [
        (event.name, event.input_shapes or [], getattr(event, attribute) / 1e6)
        for event in profiler.events()
    ]
    return shares_by_kind(events)


def main(argv: Sequence[str] | None = None) -> int:
    """The profile tables alone, as `make bench` prints them (with the two Conv3d rates they
    are read against), without the models around them."""
    from benchmarks.bench import parse_settings
    from benchmarks.conv_rates import conv_settings, issue_cases, measure_rates
    from benchmarks.measure import OtherProcessesCpu, bench_device, describe_machine
    from benchmarks.report import print_step_profile
    from benchmarks.suites import benchmark_step_profile, device_runs_bf16_natively

    settings, _ = parse_settings(argv)
    machine = describe_machine()
    print(
        f"# Train step profile: {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{' '.join(machine['cpu_flags'])}; torch {machine['torch']}; {machine['date']}"
    )
    cases = issue_cases(
        settings.conv_batch, settings.conv_channels, settings.conv_size, settings.conv_groups
    )
    with OtherProcessesCpu() as others:
        profile = benchmark_step_profile(settings)
        bf16 = device_runs_bf16_natively(bench_device())
        rates = measure_rates(cases, conv_settings(bf16), settings.conv_schedule)
    conv = {**rates, "dense": cases[0].label, "grouped": cases[1].label}
    print_step_profile(profile, conv)
    print(f"\nOther processes used {100 * others.share:.0f}% of the CPUs meanwhile.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
