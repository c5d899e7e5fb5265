"""Segmentation at equal wall-clock time: the project's default network (the planned ResNeXt UNet
of `experiments/brats_seg.yaml`) against the networks a user would pick instead, MONAI's
SegResNet (the MONAI BraTS tutorial's) and DynUNet as nnU-Net plans it.

Everything but the network is `experiments/brats_seg.yaml`: data (the anatomical phantom, real
brain anatomy with gliomas, 120 cases of which half are validated, unless ``--phantom simple`` or
``--data-dir``), crops, loss, optimizer, precision, sliding-window validation and metrics; the
learning rate is constant, as a time budget gives a schedule no length. Each network first runs
a few timed training steps in each memory format with each norm it offers (:data:`NORMS`) and
keeps its fastest setting on this machine (MONAI's networks need not be fastest in the
project's). Each network × seed then trains for the same ``--budget`` seconds (Lightning's
``max_time``) in a process of its own, and validates its last state in another (not timed), which
scores every validation case on its own grid. The networks are compared pairwise on the same
cases and seeds (:func:`resnext3d.study.paired.paired_over_cases`): the mean difference of each
case's score, with its 95% bootstrap confidence interval.

    python -m benchmarks.bench_seg [--budget 240] [--seeds 0 1] [--quick]   # make bench-seg
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from resnext3d.data.anatomical import ensure_anatomical_phantom
from resnext3d.data.datamodule import PHANTOM_DIR, PHANTOM_SEED
from resnext3d.data.phantom import ensure_phantom
from resnext3d.study.paired import paired_over_cases

ROOT = Path(__file__).parents[1]
EXPERIMENT = ROOT / "experiments" / "brats_seg.yaml"
NETWORK = "--model.init_args.network"
# What each network replaces in the experiment; the rest of the config is shared.
NETWORKS: dict[str, list[str]] = {
    "ResNeXt UNet (project default)": [],
    "MONAI SegResNet": [
        NETWORK, "monai.networks.nets.SegResNet", f"{NETWORK}.init_args.spatial_dims", "3",
        f"{NETWORK}.init_args.init_filters", "16",
        f"{NETWORK}.init_args.blocks_down", "[1, 2, 2, 4]",
        f"{NETWORK}.init_args.blocks_up", "[1, 1, 1]",
    ],
    # nnU-Net's plan for a 32³ patch of isotropic voxels: 3×3×3 kernels, downsampling while the
    # map keeps 4 voxels or more (32 -> 4), 32 features doubling to 256, instance norm.
    "MONAI DynUNet (nnU-Net plan)": [
        NETWORK, "monai.networks.nets.DynUNet", f"{NETWORK}.init_args.spatial_dims", "3",
        f"{NETWORK}.init_args.kernel_size", "[3, 3, 3, 3]",
        f"{NETWORK}.init_args.strides", "[1, 2, 2, 2]",
        f"{NETWORK}.init_args.upsample_kernel_size", "[2, 2, 2]",
        f"{NETWORK}.init_args.filters", "[32, 64, 128, 256]",
        f"{NETWORK}.init_args.norm_name", "instance",
        f"{NETWORK}.init_args.res_block", "true",
    ],
}  # fmt: skip
REGIONS = ("tc", "wt", "et")
# Folders of its own: the data module's phantoms have other parameters (cases), and each would
# regenerate the other's.
BENCH_PHANTOM_DIRS = {
    "anatomical": PHANTOM_DIR.with_name("bench_seg_anatomical"),
    "simple": PHANTOM_DIR.with_name("bench_seg_simple"),
}
# The memory formats each network is timed in before it trains, with each of its norms.
MEMORY_FORMATS: dict[str, list[str]] = {
    "channels_last_3d": ["--model.init_args.channels_last", "true"],
    "contiguous": ["--model.init_args.channels_last", "false"],
}
# The norms a network offers, its authors' first: a network trains in its fastest setting
# (memory format × norm) on this machine, as a user who measured would.
NORMS: dict[str, dict[str, list[str]]] = {
    "ResNeXt UNet (project default)": {
        "batch": [],  # brats_seg's
        "instance": [f"{NETWORK}.init_args.norm", '["instance", {"affine": true}]'],  # nnU-Net's
    },
    "MONAI SegResNet": {
        "group": [],  # SegResNet's default: 8 groups
        "batch": [f"{NETWORK}.init_args.norm", "batch"],
        "instance": [f"{NETWORK}.init_args.norm", "instance"],
    },
    "MONAI DynUNet (nnU-Net plan)": {
        "instance": [],  # nnU-Net's
        "batch": [f"{NETWORK}.init_args.norm_name", "batch"],
    },
}
PROBE_STEPS, PROBE_WARMUP_STEPS = 12, 4
# Per-case scores compared between networks: the challenge's ranking metric, and the legacy Dice.
CASE_SCORES = {
    "lesion-wise Dice": [f"lesion_dice_{region}" for region in REGIONS],
    "Dice": [f"dice_{region}" for region in REGIONS],
}


def run(args: list[str], cwd: Path) -> None:
    # The runs import the step-timing callback from this checkout's benchmarks package.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "resnext3d", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    if result.returncode != 0:
        raise RuntimeError(f"resnext3d {' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")


def run_in_new_folder(args: list[str], cwd: Path) -> Path:
    """Run `resnext3d args` in `cwd`; the run folder it created. The folders of earlier runs
    (of this bench run, or of earlier ones into the same --out) stay where they are."""
    runs = cwd / "runs" / "brats_seg"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    run(args, cwd)
    (created,) = set(runs.iterdir()) - before
    return created


def fastest_setting(
    network: list[str], norms: dict[str, list[str]], data: list[str], workdir: Path
) -> tuple[list[str], str, dict[str, float]]:
    """Time `PROBE_STEPS` training steps of `network` in each memory format with each of its
    `norms`; the fastest setting's arguments and name, and the median seconds per step after
    `PROBE_WARMUP_STEPS` of every setting, by name ("contiguous, group norm")."""
    workdir.mkdir(parents=True, exist_ok=True)
    medians, arguments = {}, {}
    for (memory_format, format_args), (norm, norm_args) in itertools.product(
        MEMORY_FORMATS.items(), (norms or {"default": []}).items()
    ):
        name = f"{memory_format}, {norm} norm" if norms else memory_format
        arguments[name] = [*format_args, *norm_args]
        probe = run_in_new_folder(
            ["fit", "--config", str(EXPERIMENT), *network, *arguments[name], *data,
             "--trainer.max_steps", str(PROBE_STEPS), "--trainer.limit_val_batches", "0",
             "--trainer.callbacks+=benchmarks.step_times.StepTimes",
             "--trainer.enable_progress_bar", "false"], workdir)  # fmt: skip
        seconds = json.loads((probe / "step_times.json").read_text())
        medians[name] = statistics.median(seconds[PROBE_WARMUP_STEPS:])
    fastest = min(medians, key=medians.__getitem__)
    return arguments[fastest], fastest, medians


def train_and_validate(
    network: list[str], seed: int, budget: float, data: list[str], workdir: Path
) -> dict:
    """Train for `budget` seconds, validate the last state; the validation metrics, the steps
    made, and each validation case's scores (``cases``: case id → column → value)."""
    workdir.mkdir(parents=True, exist_ok=True)
    hours, rest = divmod(int(budget), 3600)
    max_time = f"00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    trained = run_in_new_folder(
        ["fit", "--config", str(EXPERIMENT), *network, *data, "--seed_everything", str(seed),
         # A time budget gives a schedule no length: a constant rate, the same for everyone.
         "--model.init_args.scheduler", "null",
         # The budget is all training: validating while training would take a larger share of
         # it from the networks with shorter epochs.
         "--trainer.limit_val_batches", "0",
         "--trainer.max_epochs", "-1", "--trainer.max_time", max_time,
         "--trainer.enable_progress_bar", "false"], workdir)  # fmt: skip
    # Without validation while training no checkpoint is "best": --run takes the last state,
    # not one chosen on the cases it is then validated on.
    validated = run_in_new_folder(
        ["validate", "--run", str(trained), *data, "--trainer.limit_val_batches", "1.0",
         "--trainer.enable_progress_bar", "false"], workdir)  # fmt: skip
    with (validated / "metrics.csv").open() as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("val/dice_mean")]
    with (trained / "metrics.csv").open() as handle:
        steps = max(int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss"))
    metrics = {key.removeprefix("val/"): float(value) for key, value in row.items()
               if key.startswith("val/") and value}  # fmt: skip
    with (validated / "scores" / "val_cases.csv").open() as handle:
        cases = {
            case.pop("case_id"): {column: float(value) for column, value in case.items()}
            for case in csv.DictReader(handle)
        }
    return {**metrics, "steps": steps, "cases": cases}


def paired_comparisons(results: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    """A markdown table: for every pair of networks and each of CASE_SCORES (a case's mean over
    regions), the mean difference over the validation cases (averaged over seeds) with its 95%
    bootstrap interval, and whether the interval excludes 0 (over enough cases to tell)."""
    lines = [
        "| networks (a − b) | per-case score | mean difference | 95% CI | cases × seeds "
        "| resolved |",
        "|---|---|---|---|---|---|",
    ]
    for (a, runs_a), (b, runs_b) in itertools.combinations(results.items(), 2):
        for score, columns in CASE_SCORES.items():
            difference = paired_over_cases(
                case_scores(runs_a, seeds, columns), case_scores(runs_b, seeds, columns)
            )
            lines.append(
                f"| {a} − {b} | {score} | {difference.mean:+.4f} | "
                f"[{difference.low:+.4f}, {difference.high:+.4f}] | "
                f"{difference.n} × {len(seeds)} | {difference.verdict()} |"
            )
    return lines


def case_scores(
    runs: list[dict], seeds: list[int], columns: list[str]
) -> dict[int, dict[str, float]]:
    """Seed → case → the mean of `columns` (e.g. a score's regions) in that run's case row."""
    return {
        seed: {
            case: statistics.fmean(values[column] for column in columns)
            for case, values in run["cases"].items()
        }
        for seed, run in zip(seeds, runs, strict=True)
    }


def summarise(results: dict[str, list[dict[str, float]]]) -> list[str]:
    """A markdown table: the training steps each network made in the budget (mean over seeds),
    each metric's mean ± half range over seeds, and each network's ratios
    to the best other network's: mean Dice over TC and WT (above 1 is better), HD95 WT (below 1
    is better)."""
    keys = [f"dice_{r}" for r in REGIONS] + [f"hd95_{r}" for r in ("tc", "wt")]

    def mean(name: str, key: str) -> float:
        return statistics.fmean(seed[key] for seed in results[name])

    def score(name: str) -> float:
        return (mean(name, "dice_tc") + mean(name, "dice_wt")) / 2

    lines = [
        "| network | training steps | "
        + " | ".join(keys)
        + " | Dice (TC+WT)/2 vs best other | HD95 WT vs best other |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for name, seeds in results.items():
        cells = []
        for key in keys:
            values = [seed[key] for seed in seeds]
            spread = (max(values) - min(values)) / 2
            cells.append(f"{statistics.fmean(values):.3f} ± {spread:.3f}")
        others = [other for other in results if other != name]
        best_dice = max(score(o) for o in others) if others else float("nan")
        best_hd = min(mean(o, "hd95_wt") for o in others) if others else float("nan")
        steps = statistics.fmean(seed.get("steps", float("nan")) for seed in seeds)
        lines.append(
            f"| {name} | {steps:.0f} | " + " | ".join(cells)
            + f" | {score(name) / best_dice:.3f} | {mean(name, 'hd95_wt') / best_hd:.3f} |"
        )  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_seg", description=__doc__)
    parser.add_argument("--budget", type=float, default=240, help="training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-dir", help="a BraTS folder (default: a generated phantom)")
    parser.add_argument(
        "--phantom",
        choices=("anatomical", "simple"),
        default="anatomical",
        help="without --data-dir: the anatomical phantom (real brain anatomy, gliomas; default) "
        "or the simple one, which every network nearly solves",
    )
    parser.add_argument(
        "--cases", type=int, default=120, help="phantom cases (default %(default)s)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.5,
        help="cases validated, and so compared (default %(default)s: more cases, narrower "
        "intervals)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds per run, one seed, each network in its own norm",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/segmentation"))
    args = parser.parse_args(argv)
    budget, seeds = (5.0, args.seeds[:1]) if args.quick else (args.budget, args.seeds)
    # One phantom for every run (each runs in a folder of its own), generated before any clock.
    if args.data_dir:
        data_dir = Path(args.data_dir)
    elif args.phantom == "anatomical":
        data_dir = ensure_anatomical_phantom(BENCH_PHANTOM_DIRS["anatomical"], args.cases)
    else:
        data_dir = ensure_phantom(BENCH_PHANTOM_DIRS["simple"], args.cases, PHANTOM_SEED)
    data = [
        "--data.init_args.data_dir", str(data_dir.resolve()),
        "--data.init_args.val_fraction", str(args.val_fraction),
    ]  # fmt: skip
    if args.quick:
        data += ["--data.init_args.num_workers", "0", "--trainer.check_val_every_n_epoch", "1"]
    print(f"{len(NETWORKS)} networks x seeds {seeds}, {budget:.0f} s of training each", flush=True)
    results: dict[str, list[dict]] = {}
    settings: dict[str, dict] = {}
    started = time.perf_counter()
    for name, network in NETWORKS.items():
        folder = args.out / name.split(" (")[0].replace(" ", "_")
        norms = NORMS.get(name, {})
        if args.quick:  # the pipeline, not the choice: each network's own norm only
            norms = dict(itertools.islice(norms.items(), 1))
        fastest_args, fastest, medians = fastest_setting(
            network, norms, data, (folder / "probe").resolve()
        )
        settings[name] = {"chosen": fastest, "seconds_per_step": medians}
        print(f"  {name}: {fastest} (median s/step {medians})", flush=True)
        for seed in seeds:
            workdir = folder / f"seed{seed}"
            results.setdefault(name, []).append(
                train_and_validate([*network, *fastest_args], seed, budget, data, workdir.resolve())
            )
            scores = {k: v for k, v in results[name][-1].items() if k != "cases"}
            print(f"  {name}, seed {seed}: {scores}", flush=True)
    table = [
        *summarise(results),
        "",
        *(f"- {name}: trained {chosen['chosen']}, the fastest of "
          + ", ".join(f"{f} {s * 1000:.0f} ms/step" for f, s in chosen["seconds_per_step"].items())
          for name, chosen in settings.items()),
        "",
        *paired_comparisons(results, seeds),
    ]  # fmt: skip
    print("\n" + "\n".join(table))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"settings": settings, "runs": results}, indent=2)
    )
    (args.out / "results.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
