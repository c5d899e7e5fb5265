"""A study's results: one row per variant (complexity, timing, each replicate's best score),
each variant paired with the reference block replicate by replicate, and case by case where the
runs score each validation case (segmentation), as results.csv, results.md and results.png."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Collection
from pathlib import Path

from resnext3d.study.config import Run, Study
from resnext3d.study.paired import PairedDifference, paired_over_cases, paired_over_replicates
from resnext3d.study.plot import plot_results
from resnext3d.sweep import FINISHED_FILE, best_checkpoint_state, format_value, run_state, std
from resnext3d.training.checkpoints import read_checkpoint

# The differences between cardinalities the ResNeXt paper reports in 2D are about a point of
# accuracy: an interval narrower than ±1 point can tell such differences apart.
TARGET_HALF_WIDTH = 0.01


def collect(study: Study, failed: Collection[Run] = ()) -> list[dict]:
    """One row per variant: complexity, timing, the best metric of each finished run and the
    replicates (e.g. "seed0") of the `failed` runs."""
    rows = []
    for variant in study.variants:
        values, seconds, metric, cases = {}, [], None, {}
        runs = [run for run in study.runs if run.variant == variant]
        for run in runs:
            run_dir = study.run_dir(run)
            if run_state(run_dir) != "finished":
                continue
            state = best_checkpoint_state(run_dir)
            if state is None:
                continue
            metric, values[run.replicate] = state["monitor"], float(state["best_model_score"])
            scores_of_cases = best_case_scores(run_dir, metric, state.get("best_model_path"))
            if scores_of_cases:
                cases[run.replicate] = scores_of_cases
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
                "parameters": variant.parameters,
                "gmacs": variant.gmacs,
                "seconds_per_step": sum(seconds) / len(seconds) if seconds else math.nan,
                "metric": metric or "",
                "mean": sum(scores) / len(scores) if scores else math.nan,
                "std": std(scores),
                "runs": len(scores),
                "values": values,
                "cases": cases,
                "failed": [run.replicate for run in runs if run in failed],
            }
        )
    return rows


def best_case_scores(run_dir: Path, metric: str, best: str | None) -> dict[str, float]:
    """Each validation case's `metric` (e.g. "val/dice_mean": the mean of its dice_tc, dice_wt,
    dice_et) at the epoch of the run's best checkpoint `best`, from the per-case scores
    validation wrote then (``scores/val_epoch<N>_cases.csv``); empty where the run wrote none
    (classification)."""
    if not best or not Path(best).is_file():
        return {}
    epoch = read_checkpoint(best)["epoch"]
    path = run_dir / "scores" / f"val_epoch{epoch:03d}_cases.csv"
    if not path.is_file():
        return {}
    name = metric.removeprefix("val/")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    header = rows[0].keys() if rows else ()
    if name in header:
        columns = [name]
    elif name.endswith("_mean"):  # a mean over regions: each region's column, e.g. dice_tc
        columns = [column for column in header if column.startswith(name.removesuffix("mean"))]
    else:
        return {}
    if not columns:
        return {}
    return {row["case_id"]: statistics.fmean(float(row[c]) for c in columns) for row in rows}


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
    replicates = list(dict.fromkeys(run.replicate for run in study.runs))
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
    size = "x".join(map(str, study.variants[0].crop))
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
    """Each variant but the reference with its difference from the reference, replicate by
    replicate (:func:`~resnext3d.study.paired.paired_over_replicates`); none where the study has
    no reference variant."""
    reference = reference_row(study, rows)
    if reference is None:
        return []
    return [
        (row, paired_over_replicates(row["values"], reference["values"], TARGET_HALF_WIDTH))
        for row in rows
        if row is not reference
    ]


def paired_table(study: Study, rows: list[dict], metric: str) -> list[str]:
    """Each variant minus the reference, paired by replicate and, where the runs scored each
    validation case, by case (:mod:`resnext3d.study.paired`)."""
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
            f"{difference.n} | {difference.needed or '–'} |"
        )
    return lines + _paired_cases_table(rows, reference, metric)


def _paired_cases_table(rows: list[dict], reference: dict, metric: str) -> list[str]:
    """Each variant minus the reference case by case over the validation cases, each case's
    difference averaged over the replicates both finished, with a bootstrap interval."""
    if not reference["cases"]:
        return []
    lines = [
        "",
        f"Paired case by case: each validation case's {metric} at the best epoch, the variant's "
        "minus the reference's averaged over the replicates both finished; the 95% bootstrap "
        "interval over the cases speaks of other cases like these, not of other seeds.",
        "",
        "| variant − reference | mean difference | 95% CI | cases × replicates | resolved |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row is reference or not row["cases"].keys() & reference["cases"].keys():
            continue
        difference = paired_over_cases(row["cases"], reference["cases"])
        replicates = len(row["cases"].keys() & reference["cases"].keys())
        lines.append(
            f"| {row['variant']} | {difference.mean:+.4f} | "
            f"[{difference.low:+.4f}, {difference.high:+.4f}] | {difference.n} × {replicates} | "
            f"{difference.verdict()} |"
        )
    return lines
