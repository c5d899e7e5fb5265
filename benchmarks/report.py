"""What the benchmark's numbers say: medians over rounds, ratios to the reference and to the
dense convolution measured in the same run, the Markdown tables printed on stdout, and the JSON
file of the results.

Pure functions of the measurements, so that they can be checked on made-up numbers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.measure import train_flops

# Rows that ran while other processes used more of the CPUs than this are flagged as noisy.
NOISY_SHARE = 0.10
NOISY_MARK = " †"
PHASES = ("train", "inference")
ALLOCATOR_NAMES = {"default": "as it is", "returning": "returning freed memory (mallopt)"}


# The numbers derived from the measurements.


def summarize(rounds: Sequence[dict], volumes_per_step: int) -> dict:
    """One phase's timings from every round: the median step over all of them, and the highest
    peak."""
    step_s = [duration for timing in rounds for duration in timing["step_s"]]
    median_s = statistics.median(step_s)
    return {
        "volumes_per_s": volumes_per_step / median_s,
        "median_step_s": median_s,
        "peak_memory_mib": max(timing["peak_memory_mib"] for timing in rounds),
        "step_s": step_s,
        "warmup_s": [duration for timing in rounds for duration in timing["warmup_s"]],
    }


def compare_models(rows: list[dict], reference_key: str) -> list[dict]:
    """Add to every model row its throughput and peak memory as ratios to the row keyed
    `reference_key` (measured in the same run, so that the machine's state cancels out), and
    the GFLOP/s its train step reaches."""
    reference = next(row for row in rows if row["key"] == reference_key)
    for row in rows:
        row["ratios"] = {
            f"{phase}_{quantity}": row[phase][field] / reference[phase][field]
            for phase in PHASES
            for quantity, field in (("throughput", "volumes_per_s"), ("memory", "peak_memory_mib"))
        }
        row["train_gflops_per_s"] = train_flops(row["macs"]) / row["train"]["median_step_s"] / 1e9
    return rows


def compare_with_dense_conv(rows: list[dict], input_shape: Sequence[int], formats: dict) -> dict:
    """The dense convolution's section, and in every float32 model row the share of the faster
    memory format's GFLOP/s that its train step reaches."""
    best = max(result["gflops_per_s"] for result in formats.values())
    for row in rows:
        # The dense convolution runs in float32: a share of it says nothing of bf16 rows.
        row["fraction_of_dense_conv"] = None if row["bf16"] else row["train_gflops_per_s"] / best
    return {"input_shape": input_shape, "formats": formats, "best_gflops_per_s": best}


def compare_checkpointing(without: dict, with_: dict) -> dict:
    """What activation checkpointing saves and costs, from train steps without and with it."""
    return {
        "without": without,
        "with": with_,
        "memory_saved_percent": percent_saved(without, with_, "peak_memory_mib"),
        "activations_saved_percent": percent_saved(without, with_, "saved_activations_mib"),
        "time_added_percent": 100 * (with_["median_step_s"] / without["median_step_s"] - 1),
    }


def percent_saved(before: dict, after: dict, field: str) -> float:
    return 100 * (1 - after[field] / before[field])


def compare_loading(pipelines: dict[str, dict], train_volumes_per_s: float) -> dict[str, dict]:
    """Every loader's volumes/s as a multiple of what the train step consumes."""
    return {
        name: {
            **{
                field: value
                for field, value in result.items()
                if field != "other_processes_cpu_share"
            },
            "ratio_to_train_step": result["volumes_per_s"] / train_volumes_per_s,
            "other_processes_cpu_share": result["other_processes_cpu_share"],
        }
        for name, result in pipelines.items()
    }


def fastest_of(rows: Sequence[dict], model: str) -> dict:
    """The row of `model` whose train step moved the most volumes per second."""
    return max(
        (row for row in rows if row["model"] == model),
        key=lambda row: row["train"]["volumes_per_s"],
    )


# The tables.


def memory_format_name(channels_last: bool) -> str:
    return "channels_last_3d" if channels_last else "contiguous"


def settings_name(row: dict) -> str:
    parts = [memory_format_name(row["channels_last"])]
    if row["bf16"]:
        parts.append("bf16-mixed")
    if row["compiled"]:
        parts.append("torch.compile")
    return " + ".join(parts)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    return "\n".join([line(headers), line(["-" * width for width in widths]), *map(line, rows)])


def noisy(result: dict) -> str:
    """A mark for a measurement that other processes may have slowed down."""
    return NOISY_MARK if result["other_processes_cpu_share"] > NOISY_SHARE else ""


def with_ratio(value: float, ratio: float, digits: int) -> str:
    return f"{value:.{digits}f} ({ratio:.2f}×)"


def shape_name(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def print_header(machine: dict, settings: dict) -> None:
    """The machine and software the numbers come from, and how each step was timed; `settings`
    as saved in the JSON."""
    gpu = f" ({machine['gpu']})" if machine["gpu"] else ""
    schedule = settings["model_schedule"]
    print("# resnext3d benchmark\n")
    print(
        f"- machine: {machine['cpu']}, {machine['cpu_count']} cores "
        f"({machine['torch_threads']} torch threads, {machine['cpu_capability']}; "
        f"{' '.join(machine['cpu_flags']) or 'no AVX2, AVX-512 or AMX'}), "
        f"{machine['memory_gib']:.0f} GiB RAM; device: {machine['device']}{gpu}"
    )
    print(
        f"- software: Python {machine['python']}, torch {machine['torch']}, "
        f"MONAI {machine['monai']}, Lightning {machine['lightning']}; {machine['date']}"
    )
    print(
        "- steps: fused AdamW, cross-entropy, float32 unless bf16-mixed; each model in a fresh "
        f"process, in up to {settings['rounds']} rounds of {schedule['warmup_steps']} warm-up "
        "steps, then torch.utils.benchmark's adaptive_autorange: timed steps until their "
        f"spread is within {100 * schedule['spread']:.0f}% of their median "
        f"({schedule['budget_s']:.0f} s at most); the median of the timed steps"
    )


def print_models(models: dict, dense: dict) -> None:
    rounds = f"{models['rounds']} round{'s' if models['rounds'] > 1 else ''}"
    print(
        f"\n## Models: input {shape_name(models['input_shape'])}, ratios to MONAI SEResNeXt50, "
        f"{rounds}\n"
    )
    print(
        "Throughput in volumes/s (higher is better), peak memory in MiB above the process's "
        "footprint before the model was built (lower is better).\n"
    )
    table = []
    for row in models["rows"]:
        ratios = row["ratios"]
        table.append(
            [
                row["label"] + noisy(row),
                settings_name(row),
                f"{row['macs'] / 1e9:.1f}",
                with_ratio(row["train"]["volumes_per_s"], ratios["train_throughput"], 2),
                with_ratio(row["inference"]["volumes_per_s"], ratios["inference_throughput"], 1),
                with_ratio(row["train"]["peak_memory_mib"], ratios["train_memory"], 0),
                with_ratio(row["inference"]["peak_memory_mib"], ratios["inference_memory"], 0),
                f"{row['train_gflops_per_s']:.0f}",
                "–" if row["bf16"] else f"{100 * row['fraction_of_dense_conv']:.0f}%",
            ]
        )
    headers = [
        "model",
        "settings",
        "GMACs",
        "train vol/s",
        "infer vol/s",
        "train peak MiB",
        "infer peak MiB",
        "train GFLOP/s",
        "of dense conv",
    ]
    print(markdown_table(headers, table))
    if any(row["bf16"] for row in models["rows"]) and models["bf16_tiny_convolutions_guarded"]:
        print(
            "\nbf16-mixed: the convolutions whose input is smaller than their kernel (stage 4 at "
            "64³) run in float32, as in the tasks: this torch computes their bf16 weight "
            "gradients wrongly on this CPU (resnext3d.training.performance.TinyMapSafeConv3d)."
        )
    for row in models["rows"]:
        if row["compiled"]:
            print(
                f"\ntorch.compile: the first train step took {row['train']['warmup_s'][0]:.0f} s "
                f"and the first inference {row['inference']['warmup_s'][0]:.0f} s: compiling, "
                "or loading what earlier runs compiled from the inductor cache."
            )

    channels = dense["input_shape"][1]
    print(
        f"\n## Efficiency: a dense Conv3d {channels}→{channels} 3×3×3, forward and "
        f"backward on {shape_name(dense['input_shape'])}\n"
    )
    print(
        "GFLOP/s from analytic MACs × 2 × 3 (forward, input and weight gradients); 'of dense "
        "conv' above is a train step's GFLOP/s as a share of the faster format's.\n"
    )
    rows = [
        [name + noisy(result), f"{result['gflops_per_s']:.0f}"]
        for name, result in dense["formats"].items()
    ]
    print(markdown_table(["memory format", "GFLOP/s"], rows))


def print_checkpointing(checkpointing: dict) -> None:
    shape = shape_name(checkpointing["input_shape"])
    print(f"\n## Activation checkpointing: resnext50_32x4d train step on {shape}\n")
    rows = [
        [
            label + noisy(step),
            ALLOCATOR_NAMES[allocator],
            f"{step['peak_memory_mib']:.0f}",
            f"{step['saved_activations_mib']:.0f}",
            f"{step['median_step_s']:.1f}",
        ]
        for allocator in ALLOCATOR_NAMES
        if allocator in checkpointing
        for label, step in (
            ("off", checkpointing[allocator]["without"]),
            ("on", checkpointing[allocator]["with"]),
        )
    ]
    headers = ["checkpointing", "allocator", "train peak MiB", "saved activations MiB", "step s"]
    print(markdown_table(headers, rows))
    print()
    for allocator, name in ALLOCATOR_NAMES.items():
        if allocator in checkpointing:
            measured = checkpointing[allocator]
            print(
                f"- allocator {name}: checkpointing saves {measured['memory_saved_percent']:.0f}% "
                f"of the peak memory and {measured['activations_saved_percent']:.0f}% of the "
                f"activations kept for the backward pass, for "
                f"{measured['time_added_percent']:+.0f}% step time."
            )
    print(
        f"\nWeights, gradients and AdamW state take "
        f"{checkpointing['weights_and_optimizer_mib']:.0f} MiB of every peak."
    )


def print_loading(loading: dict, train_label: str) -> None:
    cases, shape = loading["phantom_cases"], shape_name(loading["phantom_shape"])
    print(f"\n## Data loading: BraTS phantom, {cases} cases of {shape} voxels\n")
    print(
        f"Train loader volumes/s, next to the {loading['train_volumes_per_s']:.2f} volumes/s of "
        f"the {train_label} train step.\n"
    )
    rows = [
        [
            result["pipeline"] + noisy(result),
            result["cache"],
            str(result["num_workers"]),
            f"{result['volumes_per_s']:.1f}",
            f"{result['ratio_to_train_step']:.1f}×",
            f"{result['setup_s']:.1f}",
        ]
        for result in loading["pipelines"].values()
    ]
    headers = ["pipeline", "cache", "workers", "vol/s", "of train step", "setup s"]
    print(markdown_table(headers, rows))


def print_footer(report: dict) -> None:
    print(f"\nTotal time: {report['total_s'] / 60:.1f} min.")
    share = report["other_processes_cpu_share"]
    print(f"Other processes used {100 * share:.0f}% of the CPUs during the run.")
    if any(noisy(measurement) for measurement in measurements(report)):
        print(
            f"{NOISY_MARK.strip()} Other processes used more than {100 * NOISY_SHARE:.0f}% of the "
            "CPUs while this row was measured: its numbers are unreliable, as a busy machine "
            "can slow a step down tenfold."
        )


def measurements(report: dict) -> list[dict]:
    """Every row of every section: each carries the other processes' CPU share it ran beside."""
    checkpointing = report["checkpointing"]
    return [
        *report["models"]["rows"],
        *report["dense_conv"]["formats"].values(),
        *(
            checkpointing[allocator][step]
            for allocator in ALLOCATOR_NAMES
            if allocator in checkpointing
            for step in ("without", "with")
        ),
        *report["data_loading"]["pipelines"].values(),
    ]


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
