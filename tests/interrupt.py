"""A callback that kills its own process with SIGKILL at a chosen batch, once: a test's stand-in
for a node that dies or a job the scheduler kills."""

import os
import signal
from pathlib import Path

import lightning as L


class KillAt(L.Callback):
    """SIGKILL this process at the start of training batch `batch` of epoch `epoch`, unless
    `marker` exists (it is created first, so the resumed run, which reads the same config,
    is not killed again)."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (
            self.epoch,
            self.batch,
        ) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
