"""Paired comparisons of two networks trained and scored alike, in one of two designs:

- over replicates (:func:`paired_over_replicates`): each replicate (a seed, a fold) trains both
  networks on the same split from the same seed, and the difference of their scores is taken
  replicate by replicate; the 95% t-interval of the mean difference speaks of other seeds and
  splits, and the spread of the differences says how many replicates a target width would need;
- over cases (:func:`paired_over_cases`): both networks score the same validation cases, each
  case's difference is averaged over the seeds first, and a bootstrap interval of the mean over
  cases speaks of other cases drawn like these (with one seed, not of other seeds).

Pairing removes what a replicate or a case shares (a lucky split, an easy case), so a difference
far smaller than the spread of the scores themselves can be resolved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Scores by seed, then by case id.
SeedScores = Mapping[int, Mapping[str, float]]
# Below this many cases a bootstrap interval is too coarse to claim anything (with 2 cases it has
# 3 possible means).
MIN_CASES = 10


@dataclass(frozen=True)
class PairedDifference:
    """The mean of (a − b) over `n` pairs (replicates or cases), with its 95% interval (NaN where
    the pairs cannot give one), and the replicates an interval of a target half-width would need
    (over replicates only)."""

    mean: float
    low: float
    high: float
    n: int
    needed: int | None = None
    min_pairs: int = 2

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 over enough pairs: the data tell the two apart."""
        return self.n >= self.min_pairs and (self.low > 0 or self.high < 0)

    def verdict(self) -> str:
        if self.n < self.min_pairs:
            return f"too few (< {self.min_pairs})"
        return "yes" if self.resolved else "no"


def paired_over_replicates(
    a: Mapping[str, float], b: Mapping[str, float], target_half_width: float
) -> PairedDifference:
    """Pair `a`'s and `b`'s scores by replicate (e.g. "seed0-fold1") over those both have; the
    t-interval, and the replicates n with 1.96 × s / √n ≤ `target_half_width` (the normal
    approximation, s the spread of the differences)."""
    shared = sorted(a.keys() & b.keys())
    differences = [a[r] - b[r] for r in shared]
    n = len(differences)
    if n < 2:
        mean = differences[0] if differences else math.nan
        return PairedDifference(mean, math.nan, math.nan, n)
    mean = float(np.mean(differences))
    spread = float(np.std(differences, ddof=1))
    half_width = stats.t.ppf(0.975, n - 1) * spread / math.sqrt(n)
    needed = max(2, math.ceil((1.96 * spread / target_half_width) ** 2))
    return PairedDifference(mean, mean - half_width, mean + half_width, n, needed)


def paired_over_cases(
    a: SeedScores,
    b: SeedScores,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """Compare two networks' per-case scores over the seeds and cases both have: the mean over
    cases of each case's difference averaged over seeds, with its bootstrap interval.

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
    return PairedDifference(
        float(differences.mean()), float(low), float(high), len(cases), min_pairs=MIN_CASES
    )
