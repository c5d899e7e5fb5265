"""Callbacks that the tasks attach to their runs (``configure_callbacks``): what they write into
the run directory besides checkpoints and metrics."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from monai.transforms import SaveImage

from resnext3d.evaluation.evaluate import score_columns, score_row, summarise, write_csv
from resnext3d.training.visualize import segmentation_figure


def run_dir(trainer: L.Trainer) -> Path:
    """Where the run's files go: the loggers' directory, or the root one where logging is off
    (``fast_dev_run``). Every rank must call it: ``trainer.log_dir`` broadcasts."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class ClassPredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (case id, one probability per class, predicted class) into the
    run directory at the end of ``predict``."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.directory = run_dir(trainer)  # a collective call: every rank makes it, here

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        case_ids = [case for batch in predictions for case in batch["case_id"]]
        probabilities = torch.cat([batch["probabilities"] for batch in predictions])
        case_ids, probabilities = _gather(trainer, case_ids, probabilities)
        if not trainer.is_global_zero:
            return
        names = pl_module.class_names
        path = self.directory / self.filename
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


class SegmentationWriter(BasePredictionWriter):
    """Writes each predicted case as ``predictions/<case_id>_seg.nii.gz`` in the run directory:
    the task's label map of the case (a MetaTensor in its release's label values, on the grid and
    with the affine of its input files, so that it overlays them in any viewer), by MONAI's
    ``SaveImage``.

    Args:
        submission_names: name the files ``<case_id>.nii.gz`` instead, as the BraTS challenges'
            submissions name them (``BraTS-GLI-00001-000.nii.gz`` for BraTS 2023,
            ``BraTS2021_00001.nii.gz`` for BraTS 2021).
    """

    def __init__(self, submission_names: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.suffix = "" if submission_names else "_seg"
        self.save = SaveImage(
            output_ext=".nii.gz",
            output_dtype=np.uint8,
            resample=False,  # already on the files' grid
            writer="NibabelWriter",
            print_log=False,
        )

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Here, not per batch: ranks may predict different numbers of batches, and finding the
        # directory is a collective call.
        self.directory = run_dir(trainer) / "predictions"

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for label_map, case_id in zip(prediction, batch["case_id"], strict=True):
            self.save(label_map, filename=self.directory / f"{case_id}{self.suffix}")


class CaseScoresWriter(Callback):
    """Writes each case's scores, as ``resnext3d evaluate`` writes them, after every validation
    and test epoch: ``scores/<stage>_cases.csv`` with ``<stage>_cases_summary.csv`` (mean,
    std, median) in the run directory, ``scores/val_epoch<N>_cases.csv`` during ``fit``, and
    ``..._cases_pp.csv`` for the post-processed masks. Reads the segmentation task's
    ``region_metrics`` (:class:`resnext3d.tasks.region_metrics.RegionMetrics`) before the task
    resets them."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.directory = run_dir(trainer) / "scores"  # a collective call: every rank makes it

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            fitting = trainer.state.fn == TrainerFn.FITTING
            self._write(
                trainer,
                pl_module,
                "val",
                f"val_epoch{trainer.current_epoch:03d}" if fitting else "val",
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._write(trainer, pl_module, "test", "test")

    def _write(self, trainer: L.Trainer, pl_module, stage: str, name: str) -> None:
        for key, metrics in pl_module.region_metrics.items():
            if not key.startswith(f"{stage}_"):
                continue
            cases = metrics.case_scores()  # every rank takes part in the gathering
            if not trainer.is_global_zero or not cases:
                continue
            rows = [score_row(case_id, scores) for case_id, scores in cases.items()]
            columns = score_columns(next(iter(cases.values())))
            suffix = "_pp" if key.endswith("_pp") else ""
            path = self.directory / f"{name}_cases{suffix}.csv"
            write_csv(path, ["case_id", *columns], rows)
            summary = summarise(rows, columns)
            write_csv(path.with_name(f"{path.stem}_summary.csv"), ["statistic", *columns], summary)


class SegmentationFigures(Callback):
    """After each validation epoch, draws the first validation case's image (first channel),
    ground truth and prediction in three slices through the tumour; saves it as
    ``figures/val_epoch<N>.png`` in the run directory and logs it to TensorBoard and wandb."""

    def __init__(self, region_names: Sequence[str]) -> None:
        self.region_names = list(region_names)
        self._sample: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.directory = run_dir(trainer) / "figures"  # a collective call: every rank makes it

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and trainer.is_global_zero:
            self._sample = {
                "case_id": batch["case_id"][0],
                **{
                    key: outputs[key][0].detach().float().cpu()
                    for key in ("image", "label", "prediction")
                },
            }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._sample is None:
            return
        sample, self._sample = self._sample, None
        figure = segmentation_figure(
            sample["image"][0],
            sample["label"],
            sample["prediction"],
            self.region_names,
            title=f"{sample['case_id']}, epoch {trainer.current_epoch}",
        )
        path = self.directory / f"val_epoch{trainer.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=80)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("val/slices", figure, trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image("val/slices", [str(path)], step=trainer.global_step)
