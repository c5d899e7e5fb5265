"""A callback that times training steps, for `make bench-seg` to choose each network's fastest
settings: ``--trainer.callbacks+=benchmarks.step_times.StepTimes`` writes ``step_times.json``
(every step's seconds) into the run directory at the end of ``fit``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class StepTimes(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._synchronize(pl_module)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._synchronize(pl_module)
        self.seconds.append(time.perf_counter() - self._started)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.log_dir or trainer.default_root_dir) / "step_times.json"
            path.write_text(json.dumps(self.seconds))

    @staticmethod
    def _synchronize(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
