"""``resnext3d study``: the ResNeXt paper's controlled comparison of cardinality, in 3D.

A study config (YAML, e.g. ``experiments/studies/cpu_phantom.yaml``) names a base experiment and
the variants to compare:

- an equal-complexity series: cardinalities C whose group width d is derived, for 3×3×3 kernels,
  so that a conv2-stage block costs as much as the reference (C, d) block
  (:func:`~resnext3d.models.complexity.equal_complexity_width`), all at one depth;
- a set of variants at about twice the complexity, each a cardinality with either more layers
  (deeper, the reference block) or a block twice the reference's (wider, more groups).

Every variant × seed (× fold) is an ordinary ``resnext3d fit`` run, launched as a subprocess into
``<study dir>/runs/<variant>-seed<k>/``, with its tags (C, d, depth, seed) in ``tags.json``, in
every logger's hyperparameters and as wandb tags. A run whose fit completed is skipped; one that
was killed after a checkpoint continues with ``fit --resume``; one killed before is started again.
The study then writes ``results.csv``, ``results.md`` and ``results.png`` into its directory;
``results.md`` also compares every variant with the reference block (C of the reference) run by
run: the mean paired difference over the replicates (seeds × folds) both finished, its 95%
t-interval, and how many replicates would narrow that interval to ±``TARGET_HALF_WIDTH``.

A run whose fit fails is reported (its log named, "failed" in the results) and the study goes on
with the next; it exits 1 at the end. SIGTERM or SIGINT stops the running fit (forwarded to it, so
that it saves its state) and the study, which exits 128 + the signal's number without results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from scipy import stats

from resnext3d.models import count_macs, count_parameters
from resnext3d.models.complexity import bottleneck_parameters, equal_complexity_width
from resnext3d.models.resnext import ResNeXt
from resnext3d.sweep import (
    FINISHED_FILE,
    FinishedRun,
    SweepRun,
    best_score,
    format_value,
    read_yaml,
    run_loggers,
    run_state,
    run_sweep,
    slurm_array_script,
    std,
)

EXPERIMENTS = Path("experiments")
TAGS_FILE = "tags.json"
RUN_CONFIG = "run.yaml"
LOG_FILE = "study.log"
STUDY_KEYS = {
    "name", "base", "out_dir", "input_size", "in_channels", "num_classes", "network",
    "reference", "layers", "equal_complexity", "double_complexity", "seeds", "folds",
    "overrides",
}  # fmt: skip
DOUBLE_KEYS = {"cardinality", "layers", "block_complexity"}
# The differences between cardinalities the ResNeXt paper reports in 2D are about a point of
# accuracy: an interval narrower than ±1 point can tell such differences apart.
TARGET_HALF_WIDTH = 0.01


class StudyError(Exception):
    """A study config or run directory that cannot be used; the message names the file."""


class StudyRun(FinishedRun):
    """Logs a study run's tags to every logger and times its training steps.

    Seconds per step are the wall time from a training batch's start to its end (forward,
    backward, optimizer step; not data loading, validation or start-up), summed over the run's
    steps but the first of each process, which pays for one-time initialisation. The sums live in
    the checkpoint, so a resumed run continues them. When the fit completes, ``finished.json`` in
    the run directory marks the run finished and holds the timing.

    Args:
        tags: the run's variant, C, d, depth, seed (and fold).
    """

    def __init__(self, tags: dict[str, Any]) -> None:
        self.tags = dict(tags)
        self.steps, self.seconds = 0, 0.0
        self._started: float | None = None
        self._first = True

    @property
    def state_key(self) -> str:
        return "StudyRun"

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.seconds = state_dict["steps"], state_dict["seconds"]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({f"study/{name}": value for name, value in self.tags.items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._started is None:
            return
        elapsed, self._started = time.perf_counter() - self._started, None
        if self._first:
            self._first = False
            return
        self.steps += 1
        self.seconds += elapsed

    def record(self) -> dict[str, Any]:
        seconds_per_step = self.seconds / self.steps if self.steps else None
        return {
            "tags": self.tags,
            "train_steps_timed": self.steps,
            "seconds_per_step": seconds_per_step,
        }


@dataclass(frozen=True)
class Variant:
    """One architecture of the study: `group` is "equal" (the equal-complexity series) or the
    2×-complexity variant's label (e.g. "deeper")."""

    group: str
    cardinality: int
    width: int
    layers: tuple[int, ...]

    @property
    def depth(self) -> int:
        """Weighted layers of a bottleneck network: the stem, three per block, the classifier."""
        return 2 + 3 * sum(self.layers)

    @property
    def name(self) -> str:
        return f"resnext{self.depth}_{self.cardinality}x{self.width}d"


@dataclass(frozen=True)
class Run:
    variant: Variant
    seed: int
    fold: int | None

    @property
    def name(self) -> str:
        fold = "" if self.fold is None else f"-fold{self.fold}"
        return f"{self.variant.name}-seed{self.seed}{fold}"

    @property
    def tags(self) -> dict[str, Any]:
        tags = {
            "variant": self.variant.name,
            "group": self.variant.group,
            "C": self.variant.cardinality,
            "d": self.variant.width,
            "depth": self.variant.depth,
            "seed": self.seed,
        }
        if self.fold is not None:
            tags["fold"] = self.fold
        return tags


@dataclass
class Study:
    """A parsed study config; see ``experiments/studies/*.yaml`` for the keys."""

    path: Path
    name: str
    base: list[Path]
    out_dir: Path
    input_size: tuple[int, ...]
    in_channels: int
    num_classes: int
    network: dict[str, Any]
    variants: list[Variant]
    seeds: list[int]
    folds: list[int | None]
    overrides: dict[str, Any] = field(default_factory=dict)
    reference_cardinality: int = 1

    @property
    def runs(self) -> list[Run]:
        """Seed by seed, so that a study stopped early has whole series at its first seeds."""
        return [
            Run(variant, seed, fold)
            for seed in self.seeds
            for fold in self.folds
            for variant in self.variants
        ]

    def run_dir(self, run: Run) -> Path:
        return self.out_dir / "runs" / run.name


def load_study(path: str | Path, out_dir: str | Path | None = None) -> Study:
    """Read and check a study config; errors name the file and the key."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise StudyError(f"{path}: cannot read the study config: {error}") from error
    if not isinstance(config, dict):
        raise StudyError(f"{path}: a study config is a mapping of keys (base, reference, ...)")
    unknown = set(config) - STUDY_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(STUDY_KEYS)}")
    for key in ("base", "reference", "layers", "equal_complexity", "input_size"):
        if key not in config:
            raise StudyError(f"{path}: `{key}` is missing")

    name = str(config.get("name", path.stem))
    bases = config["base"] if isinstance(config["base"], list) else [config["base"]]
    base = [_experiment_file(path, str(item)) for item in bases]
    reference = config["reference"]
    if not (isinstance(reference, dict) and set(reference) == {"cardinality", "width"}):
        raise StudyError(f"{path}: `reference` needs cardinality and width, e.g. {{1, 64}}")
    budget = bottleneck_parameters(int(reference["cardinality"]), int(reference["width"]), 3)
    layers = tuple(int(n) for n in config["layers"])

    variants = [
        Variant("equal", int(c), equal_complexity_width(int(c), budget, 3), layers)
        for c in config["equal_complexity"]
    ]
    for label, spec in (config.get("double_complexity") or {}).items():
        if not isinstance(spec, dict) or "cardinality" not in spec or set(spec) - DOUBLE_KEYS:
            raise StudyError(
                f"{path}: double_complexity.{label} takes cardinality and optionally layers and "
                f"block_complexity (the block's multiple of the reference's), got {spec!r}"
            )
        cardinality = int(spec["cardinality"])
        factor = float(spec.get("block_complexity", 1 if "layers" in spec else 2))
        width = equal_complexity_width(cardinality, round(factor * budget), 3)
        variant_layers = tuple(int(n) for n in spec.get("layers", layers))
        variants.append(Variant(label, cardinality, width, variant_layers))
    names = [variant.name for variant in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudyError(f"{path}: variants {repeated} appear twice; every variant must differ")

    seeds = [int(s) for s in config.get("seeds", [0])]
    folds = config.get("folds")
    return Study(
        path=path,
        name=name,
        base=base,
        out_dir=Path(out_dir or config.get("out_dir") or Path("runs") / "studies" / name),
        input_size=tuple(int(n) for n in config["input_size"]),
        in_channels=int(config.get("in_channels", 4)),
        num_classes=int(config.get("num_classes", 2)),
        network=dict(config.get("network") or {}),
        variants=variants,
        seeds=seeds,
        folds=[None] if folds is None else [int(f) for f in folds],
        overrides=dict(config.get("overrides") or {}),
        reference_cardinality=int(reference["cardinality"]),
    )


def _experiment_file(study_path: Path, base: str) -> Path:
    """`base` as a path, or the name of a file in experiments/ (``brats_cls``)."""
    for candidate in (Path(base), EXPERIMENTS / f"{base}.yaml"):
        if candidate.is_file():
            return candidate
    raise StudyError(
        f"{study_path}: base experiment {base!r} is neither a file nor experiments/{base}.yaml "
        f"(run the study from the repository root)"
    )


# Runs.


def fit_arguments(study: Study, run: Run) -> list[str]:
    """The ``resnext3d fit`` arguments of a new run: the base experiment, the study's overrides
    and the run's own config (its architecture, seed and directory), and the StudyRun callback."""
    arguments = ["fit"]
    for base in study.base:
        arguments += ["--config", str(base)]
    arguments += ["--config", str(study.run_dir(run) / RUN_CONFIG)]
    arguments += [
        "--trainer.callbacks+=resnext3d.study.StudyRun",
        f"--trainer.callbacks.tags={json.dumps(run.tags)}",
    ]
    return arguments


def write_run_config(study: Study, run: Run) -> Path:
    """Write the run's ``run.yaml`` and ``tags.json`` into its directory; return the directory."""
    run_dir = study.run_dir(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    network = {
        **study.network,
        "cardinality": run.variant.cardinality,
        "base_width": run.variant.width,
        "layers": list(run.variant.layers),
    }
    config = _merge(
        study.overrides,
        {
            "seed_everything": run.seed,
            "model": {"init_args": {"network": {"init_args": network}}},
            "trainer": {
                "default_root_dir": str(run_dir.resolve()),
                "logger": _run_loggers(study, run),
            },
        },
    )
    if run.fold is not None:
        config = _merge(config, {"data": {"init_args": {"fold": run.fold}}})
    (run_dir / RUN_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / TAGS_FILE).write_text(json.dumps(run.tags, indent=1) + "\n")
    return run_dir


def _run_loggers(study: Study, run: Run) -> list[dict] | bool:
    """The loggers the run's configs choose (defaults, base, overrides: the last to set them),
    each writing into the run's directory, wandb with the run's tags."""
    configs = [*(read_yaml(path) for path in study.base), study.overrides]
    wandb = {
        "name": f"{study.name}/{run.name}",
        "group": study.name,
        "tags": [f"{key}={value}" for key, value in run.tags.items()],
    }
    return run_loggers(configs, study.run_dir(run), wandb)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _sweep_run(study: Study, run: Run) -> SweepRun:
    def start() -> list[str]:
        write_run_config(study, run)
        return fit_arguments(study, run)

    return SweepRun(run.name, study.run_dir(run), LOG_FILE, start)


# Results.


def variant_complexity(study: Study, variant: Variant) -> tuple[int, float]:
    """Parameters and GMACs at the study's input size, counted on the meta device."""
    with torch.device("meta"):
        model = ResNeXt(
            **{
                **study.network,
                "cardinality": variant.cardinality,
                "base_width": variant.width,
                "layers": variant.layers,
                "in_channels": study.in_channels,
                "num_classes": study.num_classes,
            }
        )
        macs = count_macs(model, (1, study.in_channels, *study.input_size))
    return count_parameters(model), macs / 1e9


def collect(study: Study, failed: Collection[Run] = ()) -> list[dict]:
    """One row per variant: complexity, timing, the best metric of each finished run and the
    replicates (e.g. "seed0") of the `failed` runs."""
    rows = []
    for variant in study.variants:
        parameters, gmacs = variant_complexity(study, variant)
        values, seconds, metric = {}, [], None
        runs = [run for run in study.runs if run.variant == variant]
        for run in runs:
            run_dir = study.run_dir(run)
            if run_state(run_dir) != "finished":
                continue
            score = best_score(run_dir)
            if score is None:
                continue
            metric, values[_replicate(run)] = score
            record = json.loads((run_dir / FINISHED_FILE).read_text())
            if record.get("seconds_per_step") is not None:
                seconds.append(record["seconds_per_step"])
        scores = list(values.values())
        rows.append(
            {
                "group": variant.group,
                "variant": variant.name,
                "C": variant.cardinality,
                "d": variant.width,
                "depth": variant.depth,
                "parameters": parameters,
                "gmacs": gmacs,
                "seconds_per_step": sum(seconds) / len(seconds) if seconds else math.nan,
                "metric": metric or "",
                "mean": sum(scores) / len(scores) if scores else math.nan,
                "std": std(scores),
                "runs": len(scores),
                "values": values,
                "failed": [_replicate(run) for run in runs if run in failed],
            }
        )
    return rows


def _replicate(run: Run) -> str:
    """The run's seed (and fold): its column in the results, e.g. "seed0"."""
    return run.name.removeprefix(run.variant.name + "-")


@dataclass(frozen=True)
class PairedDifference:
    """A variant's best metric minus the reference's, over the replicates both finished."""

    mean: float
    low: float  # the 95% t-interval
    high: float
    replicates: int
    needed: int | None  # replicates for a half-width of TARGET_HALF_WIDTH; None with fewer than 2


def paired_difference(variant: dict[str, float], reference: dict[str, float]) -> PairedDifference:
    """Pair two variants' runs by replicate (the same seed and fold: the same split and
    initialisation seed), so that what a replicate shares, such as a lucky split, cancels."""
    shared = sorted(variant.keys() & reference.keys())
    differences = [variant[r] - reference[r] for r in shared]
    n = len(differences)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, None)
    mean = sum(differences) / n
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, 1, None)
    spread = std(differences)
    half_width = stats.t.ppf(0.975, n - 1) * spread / math.sqrt(n)
    # The normal approximation of the t-interval: replicates n with 1.96 × s / √n ≤ the target.
    needed = max(2, math.ceil((1.96 * spread / TARGET_HALF_WIDTH) ** 2))
    return PairedDifference(mean, mean - half_width, mean + half_width, n, needed)


def reference_row(study: Study, rows: list[dict]) -> dict | None:
    """The equal-complexity variant of the reference's cardinality: what the others are paired
    with."""
    for row in rows:
        if row["group"] == "equal" and row["C"] == study.reference_cardinality:
            return row
    return None


def write_results(study: Study, rows: list[dict]) -> list[Path]:
    """results.csv, results.md and results.png in the study's directory; a failed run's cell
    says "failed"."""
    study.out_dir.mkdir(parents=True, exist_ok=True)
    replicates = list(dict.fromkeys(_replicate(run) for run in study.runs))
    columns = ["group", "variant", "C", "d", "depth", "parameters", "gmacs"]
    columns += ["seconds_per_step", "metric", "mean", "std", "runs"]
    csv_path = study.out_dir / "results.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*columns, *replicates])
        writer.writeheader()
        for row in rows:
            failed = dict.fromkeys(row["failed"], "failed")
            writer.writerow({**{k: row[k] for k in columns}, **row["values"], **failed})

    metric = next((row["metric"] for row in rows if row["metric"]), "metric")
    size = "x".join(map(str, study.input_size))
    lines = [
        f"| group | C | d | depth | params (M) | GMACs ({size}) | s/step | best {metric} "
        f"(mean ± std, n) | {' | '.join(replicates)} |",
        "|" + "---|" * (8 + len(replicates)),
    ]
    for row in rows:
        values = [
            "failed" if name in row["failed"] else format_value(row["values"].get(name))
            for name in replicates
        ]
        lines.append(
            f"| {row['group']} | {row['C']} | {row['d']} | {row['depth']} | "
            f"{row['parameters'] / 1e6:.2f} | {row['gmacs']:.3f} | "
            f"{format_value(row['seconds_per_step'], 3)} | "
            f"{format_value(row['mean'])} ± {format_value(row['std'])} ({row['runs']}) | "
            f"{' | '.join(values)} |"
        )
    lines += ["", *paired_table(study, rows, metric)]
    md_path = study.out_dir / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    png_path = study.out_dir / "results.png"
    plot_results(rows, metric, png_path, study.name, paired_differences(study, rows))
    return [csv_path, md_path, png_path]


def paired_differences(study: Study, rows: list[dict]) -> list[tuple[dict, PairedDifference]]:
    """Each variant but the reference with its difference from the reference (see
    :func:`paired_difference`); none where the study has no reference variant."""
    reference = reference_row(study, rows)
    if reference is None:
        return []
    return [
        (row, paired_difference(row["values"], reference["values"]))
        for row in rows
        if row is not reference
    ]


def paired_table(study: Study, rows: list[dict], metric: str) -> list[str]:
    """Each variant minus the reference, paired by replicate (see :func:`paired_difference`)."""
    differences = paired_differences(study, rows)
    if not differences:
        return []
    reference = reference_row(study, rows)
    lines = [
        f"Paired with the reference block (C = {reference['C']}, d = {reference['d']}): the best "
        f"{metric} of each variant minus the reference's, run by run.",
        "",
        "| variant − reference | mean difference | 95% CI | replicates | "
        f"replicates for ±{TARGET_HALF_WIDTH:g} |",
        "|---|---|---|---|---|",
    ]
    for row, difference in differences:
        interval = (
            f"[{difference.low:+.4f}, {difference.high:+.4f}]"
            if not math.isnan(difference.low)
            else "–"
        )
        lines.append(
            f"| {row['variant']} | {difference.mean:+.4f} | {interval} | "
            f"{difference.replicates} | {difference.needed or '–'} |"
        )
    return lines


def plot_results(
    rows: list[dict],
    metric: str,
    path: Path,
    title: str,
    differences: Sequence[tuple[dict, PairedDifference]] = (),
) -> None:
    """The metric against C at equal complexity (mean ± std over seeds, each seed a grey dot), the
    2×-complexity variants beside it on the same scale, and each variant's paired difference from
    the reference with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    equal = [row for row in rows if row["group"] == "equal"]
    double = [row for row in rows if row["group"] != "equal"]
    figure, axes = plt.subplots(
        1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, max(1, len(double)), 3]}
    )
    axes[1].sharey(axes[0])
    axes[0].errorbar(
        [row["C"] for row in equal],
        [row["mean"] for row in equal],
        yerr=[0 if math.isnan(row["std"]) else row["std"] for row in equal],
        marker="o",
        capsize=4,
    )
    _plot_seeds(axes[0], [row["C"] for row in equal], equal)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks([row["C"] for row in equal])
    axes[0].set_xticklabels([f"{row['C']}×{row['d']}d" for row in equal])
    axes[0].set_xlabel(f"cardinality × width, equal complexity (depth {equal[0]['depth']})")
    axes[0].set_ylabel(f"best {metric}")
    axes[0].grid(alpha=0.3)
    if double:
        positions = range(len(double))
        axes[1].errorbar(
            list(positions),
            [row["mean"] for row in double],
            yerr=[0 if math.isnan(row["std"]) else row["std"] for row in double],
            marker="s",
            linestyle="none",
            capsize=4,
            color="tab:red",
        )
        _plot_seeds(axes[1], list(positions), double)
        axes[1].set_xticks(list(positions))
        axes[1].set_xticklabels(
            [f"{r['group']}\n{r['C']}×{r['d']}d, {r['depth']}" for r in double], fontsize=8
        )
        axes[1].set_xlim(-0.5, len(double) - 0.5)
        axes[1].set_xlabel("2× complexity")
        axes[1].grid(alpha=0.3)
    else:
        axes[1].set_visible(False)
    _plot_differences(axes[2], differences, metric)
    figure.suptitle(f"{title}: mean ± std over seeds; paired differences with 95% intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_differences(
    axes, differences: Sequence[tuple[dict, PairedDifference]], metric: str
) -> None:
    if not differences:
        axes.set_visible(False)
        return
    positions = list(range(len(differences)))
    means = [difference.mean for _, difference in differences]
    errors = [
        [0 if math.isnan(d.low) else d.mean - d.low for _, d in differences],
        [0 if math.isnan(d.high) else d.high - d.mean for _, d in differences],
    ]
    axes.errorbar(means, positions, xerr=errors, marker="o", linestyle="none", capsize=4)
    axes.axvline(0, color="grey", linewidth=1)
    axes.set_yticks(positions)
    axes.set_yticklabels([row["variant"] for row, _ in differences], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"{metric} − reference's (paired, 95% CI)")
    axes.grid(alpha=0.3)


def _plot_seeds(axes, positions: Sequence[float], rows: list[dict]) -> None:
    for position, row in zip(positions, rows, strict=True):
        values = list(row["values"].values())
        axes.scatter([position] * len(values), values, s=10, color="grey", alpha=0.6, zorder=3)


# The command.


def slurm_script(study: Study, config: Path) -> str:
    """An sbatch script that runs every run of the study as one task of a job array."""
    out_dir = study.out_dir.resolve()
    command = [
        sys.executable, "-m", "resnext3d", "study", str(config.resolve()), "--out-dir", str(out_dir)
    ]  # fmt: skip
    afterwards = (
        f"`resnext3d study {config} --out-dir {out_dir}` writes the results (it trains\n"
        "# only runs that did not finish)"
    )
    return slurm_array_script(study.name, len(study.runs), out_dir, command, afterwards)


def study_main(argv: Sequence[str] | None = None) -> int:
    """``resnext3d study CONFIG``: run every run that has not finished, then write the results.

    Exits 1 if a run failed, 128 + the signal's number if SIGTERM or SIGINT stopped it."""
    parser = argparse.ArgumentParser(
        prog="resnext3d study",
        description="Cardinality at equal complexity: one `resnext3d fit` run per variant and "
        "seed, then results.csv, results.md and results.png.",
    )
    parser.add_argument("config", type=Path, help="a study config, e.g. experiments/studies/*")
    parser.add_argument("--out-dir", type=Path, help="the study's directory (default: config's)")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="write each run's config and print its `resnext3d fit` command; train nothing",
    )
    parser.add_argument(
        "--slurm-array",
        type=Path,
        metavar="SCRIPT",
        help="write an sbatch script running the runs as a SLURM job array; train nothing",
    )
    parser.add_argument("--task", type=int, help="run only the run of this index (0-based)")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.config, args.out_dir)
    except StudyError as error:
        print(f"resnext3d study: error: {error}", file=sys.stderr)
        return 2
    runs = study.runs

    if args.print_commands:
        for run in runs:
            write_run_config(study, run)
            print(f"resnext3d {shlex.join(fit_arguments(study, run))}")
        return 0
    if args.slurm_array is not None:
        args.slurm_array.parent.mkdir(parents=True, exist_ok=True)
        (study.out_dir / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        args.slurm_array.write_text(slurm_script(study, args.config))
        print(f"{args.slurm_array}: {len(runs)} array tasks; submit it with sbatch")
        return 0
    if args.task is not None:
        if not 0 <= args.task < len(runs):
            parser.error(f"--task must be 0 to {len(runs) - 1} for {args.config}")
        runs = [runs[args.task]]

    sweep_runs = [_sweep_run(study, run) for run in runs]

    def summarise(failed_runs: list[SweepRun]) -> None:
        failed_names = {sweep_run.name for sweep_run in failed_runs}
        failed = [run for run in runs if run.name in failed_names]
        for path in write_results(study, collect(study, failed)):
            print(f"wrote {path}")

    return run_sweep("study", "runs", sweep_runs, summarise if args.task is None else None)
