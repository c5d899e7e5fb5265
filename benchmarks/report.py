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


def compare_with_conv_rates(rows: list[dict], measured: dict, dense: str, grouped: str) -> dict:
    """The convolution rates' section, and in every model row its train step's GFLOP/s as a
    fraction of the `dense` and the `grouped` convolution's forward-and-backward rate (case
    labels) in the row's own number and memory format; None where that setting was not
    measured (bf16 on a CPU without native bf16)."""
    for row in rows:
        for role, label in (("dense", dense), ("grouped", grouped)):
            rate = conv_rate(measured["rates"], label, row_dtype(row), row["channels_last"])
            row[f"fraction_of_{role}_conv"] = (
                None if rate is None else row["train_gflops_per_s"] / rate["train_gflops_per_s"]
            )
    return {**measured, "dense": dense, "grouped": grouped}


def row_dtype(row: dict) -> str:
    """The number format a model row's convolutions compute in."""
    return "bfloat16" if row["bf16"] else "float32"


def conv_rate(rates: Sequence[dict], label: str, dtype: str, channels_last: bool) -> dict | None:
    for rate in rates:
        setting = rate["setting"]
        if rate["case"]["label"] == label and (setting["dtype"], setting["channels_last"]) == (
            dtype,
            channels_last,
        ):
            return rate
    return None


def compare_cardinality(rows: list[dict]) -> list[dict]:
    """Every network of the C series with its train GFLOP/s and its step time as a multiple of
    the one-group network's (C = 1) in the same settings."""
    for row in rows:
        row["train_gflops_per_s"] = train_flops(row["macs"]) / row["train"]["median_step_s"] / 1e9
    for row in rows:
        reference = next(
            other for other in rows if other["cardinality"] == 1 and other["bf16"] == row["bf16"]
        )
        row["step_ratio_to_one_group"] = (
            row["train"]["median_step_s"] / reference["train"]["median_step_s"]
        )
    return rows


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


def print_models(models: dict) -> None:
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
                percent(row.get("fraction_of_dense_conv")),
                percent(row.get("fraction_of_grouped_conv")),
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
        "of grouped conv",
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

    print(
        "\n'of dense conv' and 'of grouped conv': the train step's GFLOP/s as a share of the "
        "forward-and-backward rate of the dense and of the grouped Conv3d below, in the row's "
        "own number and memory format."
    )


def percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.0f}%"


def print_conv_rates(conv: dict) -> None:
    """Two tables of GFLOP/s, forward and forward + backward: a row per convolution, a column
    per number and memory format; then each grouped convolution's rate as a share of the dense
    one's."""
    rates = conv["rates"]
    settings = list(
        dict.fromkeys((r["setting"]["dtype"], r["setting"]["channels_last"]) for r in rates)
    )
    cases = list(dict.fromkeys(r["case"]["label"] for r in rates))
    shapes = {r["case"]["label"]: r["case"] for r in rates}
    headers = ["Conv3d 3×3×3", "maps", *(setting_name(*setting) for setting in settings)]
    for field, title in (
        ("forward_gflops_per_s", "forward"),
        ("train_gflops_per_s", "forward + input and weight gradients (a train step's work)"),
    ):
        print(f"\n## Conv3d rates, GFLOP/s: {title}{noisy(conv)}\n")
        table = []
        for label in cases:
            case = shapes[label]
            cells = []
            for dtype, channels_last in settings:
                rate = conv_rate(rates, label, dtype, channels_last)
                cells.append("–" if rate is None else f"{rate[field]:.0f}")
            maps = f"{case['batch']}×{case['channels']}×{case['size']}³"
            table.append([label, maps, *cells])
        print(markdown_table(headers, table))
    print(
        "\nGFLOP/s from analytic MACs × 2 (forward) and × 6 (forward and both gradients); the "
        "first two rows are the issue's pair. Grouped over dense, forward + backward: "
        + "; ".join(
            f"{setting_name(dtype, channels_last)} "
            f"{grouped_over_dense(conv, dtype, channels_last):.2f}×"
            for dtype, channels_last in settings
        )
        + "."
    )


def setting_name(dtype: str, channels_last: bool) -> str:
    return f"{dtype} {'channels_last' if channels_last else 'contiguous'}"


def grouped_over_dense(conv: dict, dtype: str, channels_last: bool) -> float:
    grouped = conv_rate(conv["rates"], conv["grouped"], dtype, channels_last)
    dense = conv_rate(conv["rates"], conv["dense"], dtype, channels_last)
    return grouped["train_gflops_per_s"] / dense["train_gflops_per_s"]


def print_step_profile(profile: dict, conv: dict) -> None:
    """Each kind of operator's share of a profiled train step, a column per setting, and how
    fast the grouped convolutions ran inside the step next to the same kind alone."""
    profiles = profile["profiles"]
    shape = shape_name(profile["input_shape"])
    print(f"\n## Where a resnext50_32x4d train step's time goes: {shape}, torch.profiler\n")
    kinds = list(
        dict.fromkeys(kind for measured in profiles.values() for kind in measured["kinds"])
    )
    headers = ["operators", *(settings_name(p) + noisy(p) for p in profiles.values())]
    table = []
    for kind in kinds:
        cells = []
        for measured in profiles.values():
            entry = measured["kinds"].get(kind)
            cells.append(
                "–"
                if entry is None
                else f"{100 * entry['share']:.0f}% ({1000 * entry['seconds']:.0f} ms)"
            )
        table.append([kind, *cells])
    table.append(["total", *(f"100% ({1000 * p['total_s']:.0f} ms)" for p in profiles.values())])
    print(markdown_table(headers, table))
    print(
        "\nSelf time of every operator of one step (forward, backward, fused AdamW), summed by "
        "kind; a convolution is 'grouped' when its weight has fewer input channels than its "
        "input."
    )
    for measured in profiles.values():
        rate = measured["grouped_gflops_per_s"]
        if rate is None:
            continue
        alone = conv_rate(
            conv["rates"], conv["grouped"], row_dtype(measured), measured["channels_last"]
        )
        dense = conv_rate(
            conv["rates"], conv["dense"], row_dtype(measured), measured["channels_last"]
        )
        print(
            f"- {settings_name(measured)}: grouped convolutions take "
            f"{100 * measured['grouped_share']:.0f}% of the step and run at {rate:.0f} GFLOP/s "
            f"there ({rate / dense['train_gflops_per_s']:.2f}× the dense Conv3d's "
            f"{dense['train_gflops_per_s']:.0f}, {rate / alone['train_gflops_per_s']:.2f}× the "
            f"grouped one's {alone['train_gflops_per_s']:.0f} alone)."
        )


def print_cardinality(cardinality: dict) -> None:
    """The C series: size, cost and train-step time in each setting, beside the one-group
    network's."""
    rows = cardinality["rows"]
    shape = shape_name(cardinality["input_shape"])
    print(f"\n## Cardinality's price: the equal-complexity C series, train step on {shape}\n")
    settings = list(dict.fromkeys(settings_name(row) for row in rows))
    networks = list(dict.fromkeys(row["label"] for row in rows))
    headers = ["network", "C", "d", "params (M)", "GMACs"]
    headers += [f"{name} s/step (× C=1)" for name in settings]
    table = []
    for network in networks:
        of_network = {settings_name(row): row for row in rows if row["label"] == network}
        first = next(iter(of_network.values()))
        cells = [
            "–"
            if name not in of_network
            else f"{of_network[name]['train']['median_step_s']:.3f} "
            f"({of_network[name]['step_ratio_to_one_group']:.2f}×){noisy(of_network[name])}"
            for name in settings
        ]
        table.append(
            [
                network,
                str(first["cardinality"]),
                str(first["base_width"]),
                f"{first['parameters'] / 1e6:.2f}",
                f"{first['macs'] / 1e9:.1f}",
                *cells,
            ]
        )
    print(markdown_table(headers, table))
    print(
        "\nThe 50-layer template with C groups of width d in every block: the paper's 2D "
        "widths (1×64d … 32×4d) and the widths that give a 3D block the 1×64d block's "
        "parameters (`resnext3d complexity`); fused AdamW, cross-entropy, median step."
    )


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
    """Every row of every section measured: each carries the other processes' CPU share it ran
    beside."""
    checkpointing = report.get("checkpointing", {})
    rows = [
        *report.get("models", {}).get("rows", []),
        *([report["conv_rates"]] if "conv_rates" in report else []),
        *report.get("step_profile", {}).get("profiles", {}).values(),
        *report.get("cardinality", {}).get("rows", []),
        *(
            checkpointing[allocator][step]
            for allocator in ALLOCATOR_NAMES
            if allocator in checkpointing
            for step in ("without", "with")
        ),
        *report.get("data_loading", {}).get("pipelines", {}).values(),
    ]
    return rows


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
