"""Paired comparisons of networks on the same cases: a difference much smaller than the cases'
spread is resolved when it holds case by case, and none is claimed where there is none."""

import numpy as np
import pytest

from resnext3d.study.paired import paired_over_cases


def scores(values) -> dict[str, float]:
    return {f"case{i:03d}": float(v) for i, v in enumerate(values)}


def test_a_small_consistent_difference_is_resolved_despite_a_large_spread_of_cases():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.3, 0.95, size=60)  # cases differ by far more than the networks
    a = {seed: scores(difficulty + 0.02 + rng.normal(0, 0.01, 60)) for seed in (0, 1)}
    b = {seed: scores(difficulty + rng.normal(0, 0.01, 60)) for seed in (0, 1)}
    difference = paired_over_cases(a, b)
    assert difference.resolved and difference.low > 0
    assert difference.low < 0.02 < difference.high
    assert difference.n == 60
    # Unpaired, the same two sets of scores overlap almost entirely.
    assert np.std(list(a[0].values())) > 5 * difference.mean


def test_no_difference_is_claimed_between_two_draws_of_the_same_network():
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(0.3, 0.95, size=40)
    a = {0: scores(difficulty + rng.normal(0, 0.05, 40))}
    b = {0: scores(difficulty + rng.normal(0, 0.05, 40))}
    difference = paired_over_cases(a, b)
    assert not difference.resolved
    assert difference.low < 0 < difference.high


def test_cases_and_seeds_are_paired_by_name_and_only_shared_ones_count():
    a = {0: {"x": 0.9, "y": 0.5, "only_a": 0.0}, 1: {"x": 0.7, "y": 0.5}, 2: {"x": 0.0}}
    b = {0: {"x": 0.8, "y": 0.5}, 1: {"x": 0.6, "y": 0.3, "only_b": 1.0}}
    difference = paired_over_cases(a, b)
    # x: (0.1 + 0.1) / 2, y: (0 + 0.2) / 2 over seeds 0 and 1.
    assert difference.n == 2
    assert difference.mean == pytest.approx((0.1 + 0.1) / 2)
    # Every case agrees, but two cases cannot tell networks apart.
    assert difference.low > 0 and not difference.resolved
    assert difference.verdict().startswith("too few (< 10)")
    with pytest.raises(ValueError, match="no seed in common"):
        paired_over_cases({0: {"x": 1.0}}, {1: {"x": 1.0}})
