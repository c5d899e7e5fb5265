"""Optimizer and schedule wiring shared by the tasks; both come from the config."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable


def configure_optimizers(
    module: L.LightningModule,
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None,
):
    built = optimizer(module.parameters())
    if scheduler is None:
        return built
    return {
        "optimizer": built,
        "lr_scheduler": {"scheduler": scheduler(built), "interval": "epoch"},
    }
