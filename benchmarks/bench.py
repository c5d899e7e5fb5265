"""How fast and how lean resnext3d trains, next to MONAI's 3D ResNeXt and ResNet.

Its sections, printed as Markdown tables and written to a JSON file:

1. models: train-step and inference throughput and peak memory of ``resnext50_32x4d`` in its
   default and fastest settings (bf16 where the device has it natively) and of MONAI's
   SEResNeXt50 and resnet50, each as a ratio to MONAI SEResNeXt50 measured in the same run,
   and the GFLOP/s those train steps achieve (analytic MACs) as a fraction of a dense and of a
   grouped Conv3d's in the same number and memory format;
2. those Conv3d rates: the issue's dense and grouped pair and every grouped convolution of
   resnext50_32x4d, in float32 and bf16, channels-last and contiguous, forward and backward;
3. where a train step's time goes (torch.profiler), by kind of operator;
4. the peak memory that activation checkpointing saves on a large input, with the C library's
   allocator as it is and told to return freed memory;
5. the volumes/s of the BraTS data pipelines on a phantom, cached and uncached;
6. with ``--cardinality`` (``--cardinality only``: this section alone): train-step time of
   the equal-complexity C series (1×64d … 32×4d and the 3D widths), float32 and bf16.

Run from the repository root:
``python -m benchmarks.bench [--quick] [--batch 2 --size 64] [--cardinality [only]]``.
The work is split by job: ``measure`` (timing, memory, CPU load, the machine), ``suites`` (what
is compared, in which settings) and ``report`` (ratios, tables, the JSON file).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks import report as reporting
from benchmarks.measure import OtherProcessesCpu, describe_machine, preload_fresh_processes
from benchmarks.suites import (
    OURS_DEFAULT,
    QUICK,
    Settings,
    benchmark_cardinality,
    benchmark_checkpointing,
    benchmark_conv_rates,
    benchmark_loading,
    benchmark_models,
    benchmark_step_profile,
)


def parse_settings(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="toy sizes, one step: for the test")
    parser.add_argument("--batch", type=int, help="volumes per step (default 2)")
    parser.add_argument("--size", type=int, help="voxels per axis of the input (default 64)")
    parser.add_argument(
        "--checkpoint-size", type=int, help="voxels per axis for checkpointing (default 128)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument(
        "--cardinality",
        nargs="?",
        const="also",
        choices=["also", "only"],
        help="also (or only: --cardinality only) time the equal-complexity C series",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / f"{time.strftime('%Y%m%d-%H%M%S')}.json",
        help="the JSON file of the results (default bench-results/<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    overrides = {"batch": args.batch, "size": args.size, "checkpoint_size": args.checkpoint_size}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_compile:
        settings = replace(settings, compile=False)
    if args.cardinality:
        settings = replace(settings, cardinality=args.cardinality)
    return settings, args.out


def main(argv: Sequence[str] | None = None) -> int:
    settings, out = parse_settings(argv)
    started = time.perf_counter()
    preload_fresh_processes()
    # Line by line, so that the tables and the progress on stderr interleave in order.
    sys.stdout.reconfigure(line_buffering=True)
    report = {"machine": describe_machine(), "settings": asdict(settings)}
    reporting.print_header(report["machine"], report["settings"])
    with OtherProcessesCpu() as others:
        if settings.cardinality != "only":
            measure_everything_but_cardinality(settings, report)
        if settings.cardinality:
            report["cardinality"] = benchmark_cardinality(settings)
            reporting.print_cardinality(report["cardinality"])
    report["other_processes_cpu_share"] = others.share
    report["total_s"] = time.perf_counter() - started
    reporting.print_footer(report)
    reporting.save(report, out)
    print(f"Results: {out}")
    return 0


def measure_everything_but_cardinality(settings: Settings, report: dict) -> None:
    """The models, the convolutions' rates, the profile, checkpointing and the data pipelines,
    each printed once measured; into `report`."""
    report["models"] = benchmark_models(settings)
    report["conv_rates"] = benchmark_conv_rates(settings, report["models"])
    reporting.print_models(report["models"])
    reporting.print_conv_rates(report["conv_rates"])
    report["step_profile"] = benchmark_step_profile(settings)
    reporting.print_step_profile(report["step_profile"], report["conv_rates"])
    report["checkpointing"] = benchmark_checkpointing(settings)
    reporting.print_checkpointing(report["checkpointing"])
    fastest = reporting.fastest_of(report["models"]["rows"], OURS_DEFAULT.model)
    report["data_loading"] = benchmark_loading(settings, fastest["train"]["volumes_per_s"])
    reporting.print_loading(
        report["data_loading"],
        f"fastest {OURS_DEFAULT.model} ({reporting.settings_name(fastest)})",
    )


if __name__ == "__main__":
    sys.exit(main())
