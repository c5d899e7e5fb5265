"""Grade and regions from one network against a network for each, at equal wall-clock time.

Three runs of `experiments/brats_multitask.yaml` per seed, the same network (the planned ResNeXt
UNet with its grade head), data, crops and optimizer, differing only in the loss weights: the
multi-task run (grade 1, regions 1), the grade-only run (regions 0: its steps run the encoder and
the grade head alone) and the regions-only run (grade 0). Each trains for the same ``--budget``
seconds (Lightning's ``max_time``, which starts once the data are loaded), one after another in
this process (cases preprocessed into a disk cache and kernels warmed up before any clock starts),
at a constant learning rate (a time budget gives a schedule no length), without validating; its
last state is then validated (not timed) on the held-out cases of the hard phantom, with
:data:`VALIDATION`'s cheaper windows and scores. So the multi-task run had T seconds for both tasks
where the two single-task runs together had 2T.

Compared per seed (the replicate: the training seed; the split is the same for all), multi-task
minus single-task, for validation AUROC (against the grade-only run) and Dice (against the
regions-only run), with the 95% t-interval over seeds (:func:`paired_over_replicates`); Dice also
case by case (:func:`paired_over_cases`, a bootstrap over the validation cases).

    python -m benchmarks.bench_multitask [--budget 75] [--seeds 0 1 2] [--quick]
    make bench-multitask [ARGS=...]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
import yaml

from resnext3d.cli import main
from resnext3d.data import BratsMultitaskData
from resnext3d.data.datamodule import PHANTOM_DIR, PHANTOM_SEED
from resnext3d.data.phantom import ensure_phantom
from resnext3d.study.paired import PairedDifference, paired_over_cases, paired_over_replicates

ROOT = Path(__file__).parents[1]
EXPERIMENT = ROOT / "experiments" / "brats_multitask.yaml"
WEIGHTS = "--model.init_args"
# What each run changes in the experiment.
RUNS: dict[str, list[str]] = {
    "multi-task": [],
    "grade only": [f"{WEIGHTS}.regions_weight", "0"],
    "regions only": [f"{WEIGHTS}.grade_weight", "0"],
}
# Each run's metrics: the grade's for the runs that train it, the regions' likewise.
GRADE_METRICS = ("auroc",)
REGION_METRICS = ("dice_mean", "dice_tc", "dice_wt", "dice_et")
# The single-task run each multi-task metric is paired with.
BASELINES = {"auroc": "grade only", **{metric: "regions only" for metric in REGION_METRICS}}
DICE_COLUMNS = ("dice_tc", "dice_wt", "dice_et")
# Validation sized for 2 shared CPU cores: windows that do not overlap (8 per phantom case rather
# than 27) and masks scored on the network's 3 mm grid rather than each case's own.
VALIDATION = [
    "--model.init_args.overlap", "0",
    "--model.init_args.scoring_grid", "resampled",
]  # fmt: skip
WARMUP_STEPS = 3


def resnext3d(args: list[str], cwd: Path) -> None:
    """`resnext3d args` in this process (the imports paid once), from the folder `cwd`."""
    previous = Path.cwd()
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            main(args)
    finally:
        os.chdir(previous)


def train_and_validate(
    weights: list[str], seed: int, budget: float, data: list[str], run_dir: Path
) -> dict:
    """Train for `budget` seconds into `run_dir`, validate the last state; the validation
    metrics, the training steps made, and each validation case's mean Dice (``cases``)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    hours, rest = divmod(int(budget), 3600)
    max_time = f"00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    resnext3d(
        ["fit", "--config", str(EXPERIMENT), *weights, *data, "--seed_everything", str(seed),
         "--run_dir", str(run_dir), "--model.init_args.scheduler", "null",
         "--trainer.limit_val_batches", "0", "--trainer.max_epochs", "-1",
         "--trainer.max_time", max_time, "--trainer.enable_progress_bar", "false"],
        run_dir.parent,
    )  # fmt: skip
    # Other processes share the CPU: the load over the last minute of training says how much.
    load = os.getloadavg()[0]
    before = set(run_dir.parent.iterdir())
    # Without validation while training no checkpoint is "best": --run takes the last state.
    resnext3d(
        ["validate", "--run", str(run_dir), *data, *VALIDATION, "--trainer.limit_val_batches",
         "1.0", "--trainer.enable_progress_bar", "false"],
        run_dir.parent,
    )  # fmt: skip
    (validated,) = set(run_dir.parent.iterdir()) - before
    with (validated / "metrics.csv").open() as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("val/loss")]
    metrics = {key.removeprefix("val/"): float(value) for key, value in row.items()
               if key.startswith("val/") and value}  # fmt: skip
    cases = {}
    scores = validated / "scores" / "val_cases.csv"
    if scores.is_file():  # the runs that score the regions
        with scores.open() as handle:
            cases = {
                case["case_id"]: statistics.fmean(float(case[c]) for c in DICE_COLUMNS)
                for case in csv.DictReader(handle)
            }
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {**metrics, "steps": last["global_step"], "load": load, "cases": cases}


def warm_up(data: list[str], folder: Path) -> None:
    """A few steps of every run's kind before any clock starts: the first steps of a process
    choose and build its convolution kernels, which would otherwise cost the first run alone
    part of its budget."""
    for name, weights in RUNS.items():
        resnext3d(
            ["fit", "--config", str(EXPERIMENT), *weights, *data,
             "--run_dir", str(folder / name.replace(" ", "-")),
             "--trainer.max_steps", str(WARMUP_STEPS), "--trainer.limit_val_batches", "0",
             "--trainer.enable_progress_bar", "false"],
            folder,
        )  # fmt: skip


def fill_cache(data: list[str]) -> None:
    """Preprocess every case into the runs' disk cache (the experiment's crops and spacing with
    the `data` overrides), before any clock starts."""
    settings = yaml.safe_load(EXPERIMENT.read_text())["data"]["init_args"]
    overrides = dict(zip(data[::2], data[1::2], strict=True))
    for option, value in overrides.items():
        settings[option.removeprefix("--data.init_args.")] = yaml.safe_load(value)
    module = BratsMultitaskData(**settings)
    module.setup("fit")
    for part in ("train", "val"):
        dataset = module._datasets[part]
        for index in range(len(dataset)):
            dataset[index]


def spread(values: list[float]) -> str:
    """Mean ± half the range."""
    return f"{statistics.fmean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def results_table(results: dict[str, dict[int, dict]], seeds: list[int]) -> list[str]:
    """A row per run: steps in the budget and the CPU's load average at the end of training
    (means over seeds), then each metric it trains, mean ± half range over seeds and each seed's
    value."""
    metrics = [*GRADE_METRICS, *REGION_METRICS]
    lines = [
        "| run | training steps | load | " + " | ".join(f"val/{m}" for m in metrics) + " |",
        "|---" * (len(metrics) + 3) + "|",
    ]
    for name, runs in results.items():
        steps = statistics.fmean(runs[seed]["steps"] for seed in seeds)
        load = statistics.fmean(runs[seed]["load"] for seed in seeds)
        cells = []
        for metric in metrics:
            values = [runs[seed][metric] for seed in seeds if metric in runs[seed]]
            seeds_text = ", ".join(f"{v:.3f}" for v in values)
            cells.append(f"{spread(values)} ({seeds_text})" if values else "–")
        lines.append(f"| {name} | {steps:.0f} | {load:.1f} | " + " | ".join(cells) + " |")
    return lines


def paired_table(results: dict[str, dict[int, dict]], seeds: list[int]) -> list[str]:
    """Multi-task minus single-task, seed by seed (t-interval) and, for Dice, case by case."""
    lines = [
        "| multi-task − single-task | metric | pairs | mean difference | 95% CI | resolved |",
        "|---|---|---|---|---|---|",
    ]
    multi = results["multi-task"]
    for metric, baseline in BASELINES.items():
        single = results[baseline]
        difference = paired_over_replicates(
            {str(s): multi[s][metric] for s in seeds}, {str(s): single[s][metric] for s in seeds},
            target_half_width=0.01,
        )  # fmt: skip
        lines.append(row(f"− {baseline}", f"val/{metric}", f"{difference.n} seeds", difference))
    single = results["regions only"]
    difference = paired_over_cases(
        {s: multi[s]["cases"] for s in seeds}, {s: single[s]["cases"] for s in seeds}
    )
    lines.append(
        row("− regions only", "case Dice (mean of TC, WT, ET)",
            f"{difference.n} cases × {len(seeds)} seeds", difference)
    )  # fmt: skip
    return lines


def row(comparison: str, metric: str, pairs: str, difference: PairedDifference) -> str:
    interval = (
        "–" if math.isnan(difference.low) else f"[{difference.low:+.3f}, {difference.high:+.3f}]"
    )
    return (
        f"| {comparison} | {metric} | {pairs} | {difference.mean:+.3f} | {interval} "
        f"| {difference.verdict()} |"
    )


def run_benchmark(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_multitask", description=__doc__
    )
    parser.add_argument("--budget", type=float, default=75, help="training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", help="a BraTS folder with grades (default: the hard phantom)")
    parser.add_argument("--cases", type=int, default=100, help="hard phantom cases")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="cases validated (default %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds per run, one seed: the pipeline only"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/multitask"))
    args = parser.parse_args(argv)
    budget, seeds = (5.0, args.seeds[:1]) if args.quick else (args.budget, args.seeds)
    # The data module's hard phantom, generated before any clock starts.
    data_dir = Path(args.data_dir) if args.data_dir else ensure_phantom(
        PHANTOM_DIR.with_name(f"{PHANTOM_DIR.name}_hard"), args.cases, PHANTOM_SEED,
        difficulty="hard",
    )  # fmt: skip
    out = args.out.resolve()
    data = [
        "--data.init_args.data_dir", str(data_dir.resolve()),
        "--data.init_args.val_fraction", str(args.val_fraction),
        # Preprocessed once, read by every run: no run spends its budget loading the cases.
        "--data.init_args.cache", "disk", "--data.init_args.cache_dir", str(out / "cache"),
        # Loader processes would start inside each run's budget; the crops are cheap to draw.
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip
    # The runs of an earlier benchmark into the same folder would be resumed or validated again.
    for folder in ("runs", "warm-up"):
        shutil.rmtree(out / folder, ignore_errors=True)
    started = time.perf_counter()
    fill_cache(data)
    warm_up(data, out / "warm-up")
    print(f"cases cached, kernels warmed up in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"{len(RUNS)} runs x seeds {seeds}, {budget:.0f} s of training each", flush=True)
    started = time.perf_counter()
    results: dict[str, dict[int, dict]] = {name: {} for name in RUNS}
    for seed in seeds:
        for name, weights in RUNS.items():
            run_dir = out / "runs" / f"{name.replace(' ', '-')}-seed{seed}"
            results[name][seed] = train_and_validate(weights, seed, budget, data, run_dir)
            scores = {k: v for k, v in results[name][seed].items() if k != "cases"}
            print(f"  {name}, seed {seed}: {scores}", flush=True)
    table = [*results_table(results, seeds), "", *paired_table(results, seeds)]
    print("\n" + "\n".join(table))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    run_benchmark()
