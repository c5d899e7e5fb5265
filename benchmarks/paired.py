"""Paired comparisons of networks scored on the same cases: each case's difference of scores,
averaged over seeds, and a bootstrap confidence interval of the mean difference over cases.

Pairing removes what the cases share (an easy case is easy for every network), so a difference
far smaller than the spread of the scores themselves can be resolved. Resampling cases, not runs,
makes the interval speak of other cases drawn like these; averaging each case over seeds first
folds the seeds' spread into each case's difference, so a difference that one seed's luck makes
does not look resolved (with one seed the interval says nothing of other seeds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Scores by seed, then by case id.
SeedScores = Mapping[int, Mapping[str, float]]
# Below this many cases a bootstrap interval is too coarse to claim anything (with 2 cases it has
# 3 possible means).
MIN_CASES = 10


@dataclass(frozen=True)
class PairedDifference:
    """The mean over cases of (a − b), with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    cases: int

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 over enough cases: the data tell the two apart."""
        return self.cases >= MIN_CASES and (self.low > 0 or self.high < 0)

    def verdict(self) -> str:
        if self.cases < MIN_CASES:
            return f"too few cases (< {MIN_CASES})"
        return "yes" if self.resolved else "no"


def paired_difference(
    a: SeedScores,
    b: SeedScores,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """Compare two networks' per-case scores over the seeds and cases both have.

    Raises:
        ValueError: the two share no seed, or no case within their shared seeds.
    """
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} and {sorted(b)}")
    cases = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)))
    if not cases:
        raise ValueError(f"no case scored for both in every one of seeds {seeds}")
    differences = np.array(
        [np.mean([a[s][case] - b[s][case] for s in seeds]) for case in cases], dtype=float
    )
    generator = np.random.default_rng(seed)
    draws = generator.integers(0, len(cases), size=(resamples, len(cases)))
    means = differences[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(float(differences.mean()), float(low), float(high), len(cases))
