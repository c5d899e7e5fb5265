"""Callbacks that interrupt a run at a chosen batch: a test's stand-in for a node that dies
(SIGKILL), a scheduler that stops a job (SIGTERM), a user's Ctrl-C (SIGINT), weights that
diverge."""

import os
import signal
from pathlib import Path

import lightning as L
import torch


class KillAt(L.Callback):
    """Send this process `signal_name` at the start of training batch `batch` of epoch `epoch`,
    unless `marker` exists (it is created first, so the resumed run, which reads the same config,
    is not stopped again)."""

    def __init__(self, epoch: int, batch: int, marker: str, signal_name: str = "SIGKILL") -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)
        self.signal = signal.Signals[signal_name]
        if self.signal == signal.SIGINT:
            # As in a terminal's foreground process: one started in the background (a CI job's
            # `cmd &`) inherits SIGINT ignored, and Python then raises no KeyboardInterrupt.
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (
            self.epoch,
            self.batch,
        ) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signal)


class PoisonWeightsAt(L.Callback):
    """Set the first weight to NaN at the start of every training batch of epoch `epoch`."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
