"""Callbacks the CLI adds to every run."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class ClassPredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (case id, one probability per class, predicted class) into the
    run directory at the end of ``predict``. Tasks whose predictions are not class
    probabilities write their own outputs and are skipped."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        batches = [b for b in predictions if isinstance(b, dict) and "probabilities" in b]
        if not batches:
            return
        case_ids = [case for batch in batches for case in batch["case_id"]]
        probabilities = torch.cat([batch["probabilities"] for batch in batches])
        case_ids, probabilities = _gather(trainer, case_ids, probabilities)
        if not trainer.is_global_zero:
            return
        names = pl_module.class_names
        path = Path(trainer.log_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case_id", *(f"p_{name}" for name in names), "predicted"])
            for case_id, row in sorted(zip(case_ids, probabilities.tolist(), strict=True)):
                writer.writerow([case_id, *(f"{p:.6f}" for p in row), names[row.index(max(row))]])


def _gather(
    trainer: L.Trainer, case_ids: list[str], probabilities: torch.Tensor
) -> tuple[list[str], torch.Tensor]:
    """Every rank's predictions, once per case (distributed samplers pad with repeats)."""
    if trainer.world_size == 1:
        return case_ids, probabilities
    gathered: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, (case_ids, probabilities.cpu()))
    unique = {}
    for ids, probs in gathered:
        unique.update(zip(ids, probs, strict=True))
    return list(unique), torch.stack(list(unique.values()))
