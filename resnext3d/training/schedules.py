"""Learning-rate schedules whose length is the run's, read from the trainer."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """A linear warm-up over `warmup_steps`, then a cosine decay to `min_lr_ratio` times the
    optimizer's rate at the run's last step.

    Stepped every optimizer step. The tasks call :meth:`fit_to_run` with the trainer's
    ``estimated_stepping_batches``, so ``--trainer.max_epochs`` or ``max_steps`` sets the length
    of the decay, resumed runs included; no config keeps a second number equal to it.

    Args:
        optimizer: the optimizer whose rates it sets.
        warmup_steps: optimizer steps of linear warm-up from ``1/(warmup_steps+1)`` of the rate.
        min_lr_ratio: the final rate as a fraction of the optimizer's.
    """

    interval = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.total_steps: int | None = None
        super().__init__(optimizer, last_epoch)

    def fit_to_run(self, total_steps: int | float) -> None:
        if not math.isfinite(total_steps):
            raise ValueError(
                "WarmupCosineLR needs a run of known length: set trainer.max_epochs or max_steps"
            )
        self.total_steps = int(total_steps)

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def factor(self, step: int) -> float:
        """The fraction of the optimizer's rate at optimizer step `step` (from 0)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if not self.total_steps:
            return 1.0
        decay_steps = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine

    def state_dict(self) -> dict:
        # The length is the run's, not the checkpoint's: a resumed run may be given more epochs.
        state = super().state_dict()
        state.pop("total_steps", None)
        return state
