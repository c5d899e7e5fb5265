"""Every training step's random numbers from (run seed, epoch, batch, rank): see
:mod:`resnext3d.seeds` for why they are derived rather than saved."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from resnext3d.seeds import derive_seed, run_seed, seed_generators


class SeedEveryStep(L.Callback):
    """Seeds Python, numpy and torch before each training batch from the run's seed and the
    batch's place in the run, so that dropout and drop-path masks of a resumed run are those of
    the uninterrupted one. Its checkpoint state is the seed, to warn when a run resumes with
    another."""

    def __init__(self) -> None:
        self.seed = run_seed()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.seed = run_seed()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        seed_generators(
            derive_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        )

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            rank_zero_warn(
                f"the checkpoint was written by a run seeded with {state_dict['seed']}, this run "
                f"is seeded with {self.seed}: it will not continue the same random streams "
                f"(resume with --seed_everything {state_dict['seed']} for that)"
            )
