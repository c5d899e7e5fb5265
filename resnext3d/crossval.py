"""``resnext3d cv``: k-fold cross-validation of an experiment as one command.

Fold k of K is an ordinary ``resnext3d fit`` run of the experiment with the user's overrides and
``--data.init_args.fold k --data.init_args.num_folds K`` (the data modules' stratified k-fold
split), launched as a subprocess into ``<cv dir>/fold<k>/``, an ordinary run directory
(``predict --run`` takes it). The cross-validation's directory is
``runs/<experiment>/cv-<K>fold`` or, with further configs or overrides,
``runs/<experiment>/cv-<K>fold-<hash>``, the hash of those arguments: the same command finds its
folds again, another one does not mix its folds in. Folds run as the study's runs do
(:mod:`resnext3d.sweep`): a finished fold is skipped, a killed one resumed with ``fit --resume``,
a failed one reported (the command goes on, then exits 1), SIGTERM and SIGINT forwarded to the
running fit (exit 128 + the signal's number, no summary).

The summary, ``cv_results.csv`` and ``cv_results.md`` in the cross-validation's directory (and
printed), has a row per fold with the best value of its checkpoint monitor (the ModelCheckpoint's
best score in the fold's last.ckpt) and the other validation metrics of that epoch (from its
metrics.csv), then their mean and sample standard deviation over the finished folds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import shlex
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from resnext3d.sweep import (
    SweepRun,
    best_score,
    format_value,
    run_state,
    run_sweep,
    slurm_array_script,
    std,
)

LOG_FILE = "cv.log"
RESULTS = "cv_results"
# What the cross-validation decides for each fold, so an override may not set it.
RESERVED_OPTIONS = (
    "--data.init_args.fold", "--data.fold", "--data.init_args.num_folds", "--data.num_folds",
    "--trainer.default_root_dir", "--run_dir",
)  # fmt: skip


class CrossValidationError(Exception):
    """Arguments that cannot make a cross-validation; the message says why."""


@dataclass(frozen=True)
class CrossValidation:
    """`configs`: the experiment first, as for fit; `overrides`: fit's dotted overrides."""

    configs: tuple[Path, ...]
    num_folds: int
    overrides: tuple[str, ...]
    out_dir: Path

    @property
    def name(self) -> str:
        """The experiment and the directory, e.g. "brats_seg-cv-5fold": the job's name."""
        return f"{self.configs[0].stem}-{self.out_dir.name}"

    def fold_dir(self, fold: int) -> Path:
        return self.out_dir / f"fold{fold}"


def cross_validation(
    configs: Sequence[Path],
    num_folds: int,
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
) -> CrossValidation:
    """Check the arguments and choose the directory (`out_dir`, or the default above)."""
    if not configs:
        raise CrossValidationError("give the experiment: --config experiments/<name>.yaml")
    for config in configs:
        if not Path(config).is_file():
            raise CrossValidationError(f"{config}: no such config file")
    if num_folds < 2:
        raise CrossValidationError(f"--folds must be 2 or more, got {num_folds}")
    reserved = [arg for arg in overrides if arg.split("=")[0] in RESERVED_OPTIONS]
    if reserved:
        raise CrossValidationError(
            f"{reserved[0]}: each fold's split and directory are the cross-validation's"
        )
    configs = tuple(Path(config) for config in configs)
    if out_dir is None:
        variant = [str(config) for config in configs[1:]] + list(overrides)
        suffix = ""
        if variant:
            suffix = "-" + hashlib.sha256("\0".join(variant).encode()).hexdigest()[:8]
        out_dir = Path("runs") / configs[0].stem / f"cv-{num_folds}fold{suffix}"
    return CrossValidation(configs, num_folds, tuple(overrides), Path(out_dir))


def fit_arguments(cv: CrossValidation, fold: int) -> list[str]:
    """The ``resnext3d fit`` arguments of a new fold: the configs and overrides, the fold and its
    directory, and the callback that marks it finished."""
    arguments = ["fit"]
    for config in cv.configs:
        arguments += ["--config", str(config)]
    arguments += [*cv.overrides]
    arguments += [
        "--data.init_args.fold",
        str(fold),
        "--data.init_args.num_folds",
        str(cv.num_folds),
        f"--run_dir={cv.fold_dir(fold).resolve()}",
    ]
    arguments += ["--trainer.callbacks+=resnext3d.sweep.FinishedRun"]
    return arguments


def sweep_run(cv: CrossValidation, fold: int) -> SweepRun:
    def start() -> list[str]:
        cv.fold_dir(fold).mkdir(parents=True, exist_ok=True)
        return fit_arguments(cv, fold)

    wandb = {
        "WANDB_NAME": f"{cv.name}/fold{fold}",
        "WANDB_RUN_GROUP": cv.name,
        "WANDB_TAGS": f"fold={fold},num_folds={cv.num_folds}",
    }
    return SweepRun(f"fold{fold}", cv.fold_dir(fold), LOG_FILE, start, wandb)


# Results.


def best_epoch_metrics(run_dir: Path, monitor: str, best: float) -> tuple[int | None, dict]:
    """The epoch whose `monitor` value is `best` and its validation metrics, from the run's
    metrics.csv (None and none without one)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None, {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = [row for row in rows if row.get(monitor) and not math.isnan(float(row[monitor]))]
    if not scored:
        return None, {}
    # The closest rather than the equal value: the CSV holds it printed.
    epoch = min(scored, key=lambda row: abs(float(row[monitor]) - best))["epoch"]
    metrics = {}
    for row in rows:
        if row.get("epoch") == epoch:
            metrics.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    return int(epoch), metrics


def collect(cv: CrossValidation, failed: Collection[int] = ()) -> tuple[list[str], list[dict]]:
    """The metric columns (the monitor first) and one row per fold: its status ("finished",
    "failed" for the `failed` folds, "not finished") and its best epoch's metrics."""
    rows, monitor, others = [], None, set()
    for fold in range(cv.num_folds):
        fold_dir = cv.fold_dir(fold)
        finished = fold not in failed and run_state(fold_dir) == "finished"
        status = "failed" if fold in failed else "finished" if finished else "not finished"
        row: dict = {"fold": fold, "status": status}
        score = best_score(fold_dir) if finished else None
        if score is not None:
            monitor, best = score
            row["epoch"], metrics = best_epoch_metrics(fold_dir, monitor, best)
            row.update(metrics)
            row[monitor] = best  # the checkpoint's own value
            others.update(key for key in row if key.startswith("val/") and key != monitor)
        rows.append(row)
    return ([monitor] if monitor else []) + sorted(others), rows


def summarize(metrics: Sequence[str], rows: Sequence[dict]) -> tuple[dict, dict]:
    """The mean and the sample standard deviation of each metric over the folds that have it."""
    mean, spread = {"fold": "mean"}, {"fold": "std"}
    for metric in metrics:
        values = [row[metric] for row in rows if metric in row]
        mean[metric] = sum(values) / len(values) if values else math.nan
        spread[metric] = std(values)
    return mean, spread


def write_results(cv: CrossValidation, metrics: list[str], rows: list[dict]) -> list[Path]:
    """cv_results.csv (a row per fold, then mean and std) and cv_results.md; returns them."""
    cv.out_dir.mkdir(parents=True, exist_ok=True)
    mean, spread = summarize(metrics, rows)
    finished = sum(row["status"] == "finished" for row in rows)
    csv_path = cv.out_dir / f"{RESULTS}.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["fold", "status", "epoch", *metrics])
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow({**mean, "status": f"{finished} finished"})
        writer.writerow(spread)

    lines = [
        _table_row(["fold", "status", "best epoch", *metrics]),
        "|---" * (3 + len(metrics)) + "|",
    ]
    for row in rows:
        epoch = "–" if row.get("epoch") is None else str(row["epoch"])
        values = [format_value(row.get(metric)) for metric in metrics]
        lines.append(_table_row([str(row["fold"]), row["status"], epoch, *values]))
    values = [f"{format_value(mean[m])} ± {format_value(spread[m])}" for m in metrics]
    lines.append(_table_row(["mean ± std", f"{finished} finished", "", *values]))
    md_path = cv.out_dir / f"{RESULTS}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# The command.


def slurm_script(cv: CrossValidation) -> str:
    """An sbatch script that runs each fold as one task of a job array."""
    out_dir = cv.out_dir.resolve()
    command = [sys.executable, "-m", "resnext3d", "cv"]
    for config in cv.configs:
        command += ["--config", str(config.resolve())]
    command += ["--folds", str(cv.num_folds), "--out", str(out_dir), *cv.overrides]
    afterwards = (
        "the same command without --task writes the summary (it trains\n# only folds that did "
        "not finish)"
    )
    return slurm_array_script(cv.name, cv.num_folds, out_dir, command, afterwards)


def cv_main(argv: Sequence[str] | None = None) -> int:
    """``resnext3d cv --config EXPERIMENT --folds K [overrides]``: train every fold that has not
    finished, then write the summary. Exits 1 if a fold failed, 128 + the signal's number if
    SIGTERM or SIGINT stopped it."""
    parser = argparse.ArgumentParser(
        prog="resnext3d cv",
        allow_abbrev=False,  # an override such as --out_channels is fit's, not --out
        description="K-fold cross-validation: one `resnext3d fit` per fold, then "
        "cv_results.csv and cv_results.md with each fold's best scores and their mean ± std.",
        epilog="Every other argument is an override for each fold's fit, e.g. "
        "--trainer.max_epochs 50 --data.init_args.data_dir /path/to/BraTS.",
    )
    parser.add_argument(
        "--config",
        action="append",
        type=Path,
        required=True,
        help="the experiment, e.g. experiments/brats_seg.yaml; repeat for further configs "
        "(a logger's), as for fit",
    )
    parser.add_argument("--folds", type=int, default=5, help="the number of folds (default 5)")
    parser.add_argument(
        "--out", type=Path, help="the directory (default runs/<experiment>/cv-<K>fold[-<hash>])"
    )
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="write each fold's config and print its `resnext3d fit` command; train nothing",
    )
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="write <directory>/cv.sbatch, a SLURM job array of one task per fold; train nothing",
    )
    parser.add_argument("--task", type=int, help="run only the fold of this index (0-based)")
    args, overrides = parser.parse_known_args(argv)
    try:
        cv = cross_validation(args.config, args.folds, overrides, args.out)
    except CrossValidationError as error:
        print(f"resnext3d cv: error: {error}", file=sys.stderr)
        return 2
    folds = list(range(cv.num_folds))

    if args.print_commands:
        for fold in folds:
            print(f"resnext3d {shlex.join(fit_arguments(cv, fold))}")
        return 0
    if args.slurm:
        (cv.out_dir / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        script = cv.out_dir / "cv.sbatch"
        script.write_text(slurm_script(cv))
        print(f"{script}: {cv.num_folds} array tasks; submit it with sbatch")
        return 0
    if args.task is not None:
        if args.task not in folds:
            parser.error(f"--task must be 0 to {cv.num_folds - 1} for {cv.num_folds} folds")
        folds = [args.task]

    print(f"resnext3d cv: {cv.num_folds} folds in {cv.out_dir}", flush=True)
    runs = {fold: sweep_run(cv, fold) for fold in folds}

    def summarise(failed_runs: list[SweepRun]) -> None:
        failed = [fold for fold, run in runs.items() if run in failed_runs]
        metrics, rows = collect(cv, failed)
        paths = write_results(cv, metrics, rows)
        print(paths[1].read_text(), end="")
        for path in paths:
            print(f"wrote {path}")

    return run_sweep("cv", "folds", list(runs.values()), summarise if args.task is None else None)
