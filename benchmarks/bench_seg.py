"""Segmentation at equal wall-clock time: the project's default network (the planned ResNeXt UNet
of `experiments/brats_seg.yaml`) against the networks a user would pick instead, MONAI's
SegResNet (the MONAI BraTS tutorial's) and DynUNet as nnU-Net plans it.

Everything but the network is `experiments/brats_seg.yaml`: data (the phantom unless
``--data-dir``), crops, loss, optimizer, precision, sliding-window validation and metrics; the
learning rate is constant, as a time budget gives a schedule no length. Each network × seed
trains for the same ``--budget`` seconds (Lightning's ``max_time``) in a process of its own,
then validates its last state in another (not timed).

    python -m benchmarks.bench_seg [--budget 240] [--seeds 0 1] [--quick]   # make bench-seg
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from resnext3d.data.datamodule import PHANTOM_DIR
from resnext3d.data.phantom import ensure_phantom

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


def run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resnext3d", *args], cwd=cwd, capture_output=True, text=True
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


def train_and_validate(
    network: list[str], seed: int, budget: float, data: list[str], workdir: Path
) -> dict[str, float]:
    """Train for `budget` seconds, validate the last state; the validation metrics."""
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
    return {**metrics, "steps": steps}


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
    parser.add_argument("--data-dir", help="a BraTS folder (default: the generated phantom)")
    parser.add_argument("--quick", action="store_true", help="a few seconds per run, one seed")
    parser.add_argument("--out", type=Path, default=Path("bench-results/segmentation"))
    args = parser.parse_args(argv)
    budget, seeds = (5.0, args.seeds[:1]) if args.quick else (args.budget, args.seeds)
    # One phantom for every run (each runs in a folder of its own), generated before any clock.
    data_dir = Path(args.data_dir) if args.data_dir else ensure_phantom(PHANTOM_DIR)
    data = ["--data.init_args.data_dir", str(data_dir.resolve())]
    if args.quick:
        data += ["--data.init_args.num_workers", "0", "--trainer.check_val_every_n_epoch", "1"]
    print(f"{len(NETWORKS)} networks x seeds {seeds}, {budget:.0f} s of training each", flush=True)
    results: dict[str, list[dict[str, float]]] = {}
    started = time.perf_counter()
    for name, network in NETWORKS.items():
        for seed in seeds:
            workdir = args.out / name.split(" (")[0].replace(" ", "_") / f"seed{seed}"
            results.setdefault(name, []).append(
                train_and_validate(network, seed, budget, data, workdir.resolve())
            )
            print(f"  {name}, seed {seed}: {results[name][-1]}", flush=True)
    table = summarise(results)
    print("\n" + "\n".join(table))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
