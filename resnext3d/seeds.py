"""One seed per run, and the seeds every random stream of a training step is derived from.

A run resumed from a checkpoint must draw exactly the numbers the uninterrupted run drew. Saving
and restoring generator states cannot promise that: between a restore and the first step, a
sanity check, a data loader or its workers draw numbers the uninterrupted run drew elsewhere or
never. So nothing random carries over from one step to the next: the order of an epoch, the
augmentation of each item and the generators of each step are derived afresh from the run's
seed and where they are (epoch, item, step, rank).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

# Lightning's seed_everything, which the CLI runs, records its seed here for the whole process
# tree (DDP ranks and data loader workers inherit it).
_GLOBAL_SEED_VARIABLE = "PL_GLOBAL_SEED"


def run_seed() -> int:
    """The run's seed: the one `seed_everything` chose, else torch's initial seed."""
    seed = os.environ.get(_GLOBAL_SEED_VARIABLE)
    return int(seed) if seed is not None else torch.initial_seed()


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key, and not merely on their sum, as a hash does."""
    return int(np.random.SeedSequence([int(key) % 2**63 for key in keys]).generate_state(1)[0])


def seed_generators(seed: int) -> None:
    """Seed the generators of Python, numpy and torch (every device) in this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CUDA generators too
