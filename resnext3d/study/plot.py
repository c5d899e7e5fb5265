"""The study's plot: the metric against C at equal complexity, the 2×-complexity variants, and
each variant's paired difference from the reference with its interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resnext3d.study.paired import PairedDifference


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
