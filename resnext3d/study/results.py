"""A study's results: one row per variant (complexity, timing, each replicate's best score),
each variant paired with the reference block replicate by replicate, as results.csv, results.md
and results.png."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from resnext3d.study.config import Run, Study
from resnext3d.study.plot import plot_results
from resnext3d.sweep import FINISHED_FILE, best_score, format_value, run_state, std

# The differences between cardinalities the ResNeXt paper reports in 2D are about a point of
# accuracy: an interval narrower than ±1 point can tell such differences apart.
TARGET_HALF_WIDTH = 0.01


def collect(study: Study, failed: Collection[Run] = ()) -> list[dict]:
    """One row per variant: complexity, timing, the best metric of each finished run and the
    replicates (e.g. "seed0") of the `failed` runs."""
    rows = []
    for variant in study.variants:
        values, seconds, metric = {}, [], None
        runs = [run for run in study.runs if run.variant == variant]
        for run in runs:
            run_dir = study.run_dir(run)
            if run_state(run_dir) != "finished":
                continue
            score = best_score(run_dir)
            if score is None:
                continue
            metric, values[run.replicate] = score
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
                "failed": [run.replicate for run in runs if run in failed],
            }
        )
    return rows


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
    lines = [
        f"| group | C | d | depth | params (M) | GMACs | s/step | best {metric} "
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
