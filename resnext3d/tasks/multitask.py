"""Grade and regions from one network: a tumour's grade (HGG/LGG) and its TC, WT, ET regions,
with the losses of both tasks weighted, fixed or learnt, and every metric of both tasks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Literal

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from monai.utils import convert_to_tensor
from torchmetrics import MeanMetric

from resnext3d.data.multitask import GRADE_KEY, HAS_MASK_KEY, NO_GRADE
from resnext3d.tasks.base import fused_adamw
from resnext3d.tasks.classification import ClassMetrics
from resnext3d.tasks.postprocessing import RegionPostprocessing
from resnext3d.tasks.segmentation import ScoringGrid, VolumeSegmenter
from resnext3d.training.callbacks import ClassPredictionWriter, SegmentationWriter
from resnext3d.training.performance import ChannelsLast

TERMS = ("grade", "regions")
# How many cases trained each task in an epoch (a case counted once per batch it is in).
CASE_COUNTS = {"grade": "train/cases_graded", "regions": "train/cases_segmented"}
Weighting = Literal["fixed", "uncertainty"]


class VolumeMultitask(VolumeSegmenter):
    """Grades volumes and segments their regions with one network, e.g.
    :class:`resnext3d.models.PlannedGradingResNeXtUNet` (a network returning
    :class:`~resnext3d.models.RegionsAndGrade`, with a ``grade(image)`` method for the grade alone).

    Training takes :class:`~resnext3d.data.BratsMultitaskData`'s crops: a crop of a case without a
    grade (``grade`` -1) adds nothing to the grade loss, one of a case without a label map
    (``has_mask`` false) nothing to the regions loss; a batch without either label skips its step.
    The loss is ``grade_weight × grade loss + regions_weight × regions loss`` ("fixed"), or with
    learnt uncertainty (Kendall, Gal and Cipolla 2018; "uncertainty"): each term
    ``weight × (exp(−s) × loss + s / 2)`` with a learnt log-variance s per task. A weight of 0
    turns its task off: it is neither trained nor scored, and with ``regions_weight`` 0 training
    runs the encoder and the grade head only, so single-task runs of the same network cost what
    their task costs.

    Validation, test and predict run :class:`VolumeSegmenter`'s sliding window over whole cases;
    a case's grade is the mean of the grade head's logits over every window (and mirroring) of
    it, each window a crop like those the head was trained on. A window without tumour carries
    only the head's prior, the same for every case, so the mean keeps the cases' order (AUROC)
    though it may move the probabilities.

    Logs every metric of both tasks: :class:`VolumeClassifier`'s ``<stage>/{acc, balanced_acc,
    auroc, f1}`` and :class:`VolumeSegmenter`'s ``val/dice_<region>``, ``val/hd95_<region>``,
    lesion-wise ones and means; ``<stage>/loss_grade`` and ``<stage>/loss_regions`` (the terms),
    ``<stage>/loss`` (their weighted sum), ``train/weight_<task>`` (the weight each term took:
    with uncertainty, ``weight × exp(−s)``) and ``train/cases_graded``, ``train/cases_segmented``
    (how many cases, counted once per batch, trained each task in the epoch). Checkpoints keep the
    best ``val/dice_mean`` unless ``--monitor`` names another (``val/auroc``).
    ``predict`` writes the masks (as :class:`VolumeSegmenter`) and ``predictions.csv`` of the
    grades (as :class:`VolumeClassifier`).

    Args:
        network: the network of both tasks; its ``in_channels``, ``out_channels`` (regions),
            ``num_grades`` linked from the data module by the CLI.
        grade_names: the grade classes in index order (linked).
        grade_weight, regions_weight: each task's weight in the loss; 0 turns a task off.
        weighting: "fixed" weights, or "uncertainty": learnt ones, times the fixed ones.
        label_smoothing: the grade's cross-entropy label smoothing.
        criterion, class_names (the regions), sliding_window_size, sliding_window_batch_size,
            overlap, threshold, mirror_axes, postprocessing, submission_names, scoring_grid,
            optimizer, scheduler, layer_decay, channels_last, compile: see
            :class:`VolumeSegmenter`.
    """

    def __init__(
        self,
        network: nn.Module,
        grade_names: Sequence[str] | None = None,
        grade_weight: float = 1.0,
        regions_weight: float = 1.0,
        weighting: Weighting = "fixed",
        label_smoothing: float = 0.0,
        criterion: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        sliding_window_size: Sequence[int] | None = None,
        sliding_window_batch_size: int = 2,
        overlap: float = 0.5,
        threshold: float = 0.5,
        mirror_axes: Sequence[int] = (),
        postprocessing: RegionPostprocessing | None = None,
        submission_names: bool = False,
        scoring_grid: ScoringGrid = "original",
        optimizer: OptimizerCallable = fused_adamw,
        scheduler: LRSchedulerCallable | None = None,
        layer_decay: float | None = None,
        channels_last: ChannelsLast = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(
            network,
            criterion,
            class_names,
            sliding_window_size,
            sliding_window_batch_size,
            overlap,
            threshold,
            mirror_axes,
            postprocessing,
            submission_names,
            scoring_grid,
            optimizer,
            scheduler,
            layer_decay,
            channels_last,
            compile,
        )
        num_grades = network.num_grades
        self.grade_names = list(grade_names or [str(i) for i in range(num_grades)])
        if len(self.grade_names) != num_grades:
            raise ValueError(f"{len(self.grade_names)} grade_names for {num_grades} grades")
        if weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"weighting must be 'fixed' or 'uncertainty', got {weighting!r}")
        self.weights = {"grade": grade_weight, "regions": regions_weight}
        if any(weight < 0 for weight in self.weights.values()) or not any(self.weights.values()):
            raise ValueError(
                f"grade_weight and regions_weight must be 0 or more, one of them more than 0; "
                f"got {grade_weight} and {regions_weight}"
            )
        # s = log σ² of each task, 0 at first: both terms start at their fixed weights.
        self.log_variances = (
            nn.Parameter(torch.zeros(len(TERMS))) if weighting == "uncertainty" else None
        )
        self.grade_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.class_metrics = ClassMetrics(self.grade_names)
        self.term_losses = nn.ModuleDict(
            {
                f"{stage}_{term}": MeanMetric(nan_strategy="disable")
                for stage in ("train", "val", "test")
                for term in TERMS
            }
        )
        # The grade logits of each sliding window while they are collected (_collect_grades).
        self._window_grades: list[torch.Tensor] | None = None

    def trains(self, term: str) -> bool:
        return self.weights[term] > 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The region logits (float32): the sliding window's predictor; each window's grade
        logits are kept while :meth:`_collect_grades` asks for them."""
        output = self.network(image)
        if self._window_grades is not None:
            self._window_grades.append(output.grade.float())
        return output.regions.float()

    @contextmanager
    def _collect_grades(self, batch_size: int) -> Iterator[list[torch.Tensor]]:
        """Within: the sliding windows' grade logits are collected; after: the list holds each
        case's grade logits, the mean over its windows and mirrorings, (batch_size, grades)."""
        self._window_grades = collected = []
        try:
            yield collected
        finally:
            self._window_grades = None
        # MONAI runs the windows case by case, every window of a case in turn, once per mirroring.
        windows = torch.cat(collected).unflatten(0, (2 ** len(self.mirror_axes), batch_size, -1))
        collected[:] = [windows.mean(dim=(0, 2))]

    def weight(self, term: str) -> torch.Tensor:
        """The weight the term takes in the loss: the fixed one, times exp(−s) with uncertainty."""
        weight = torch.tensor(self.weights[term], device=self.device)
        if self.log_variances is None:
            return weight
        return weight * torch.exp(-self.log_variances[TERMS.index(term)])

    def combined_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0
        for term, loss in terms.items():
            total = total + self.weight(term) * loss
            if self.log_variances is not None:
                total = total + self.weights[term] * self.log_variances[TERMS.index(term)] / 2
        return total

    def labelled(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each task's items that train it: labelled for it, in a run that trains it."""
        return {
            "grade": (batch[GRADE_KEY] != NO_GRADE) & self.trains("grade"),
            "regions": batch[HAS_MASK_KEY].bool() & self.trains("regions"),
        }

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss of each task over the batch's items that train it (:meth:`labelled`); a task
        without such items has no term. Updates the training grade metrics."""
        image, grades = batch["image"], batch[GRADE_KEY]
        labelled = self.labelled(batch)
        if self.trains("regions"):
            output = self.network(image)
            regions, grade_logits = output.regions.float(), output.grade.float()
        else:
            regions, grade_logits = None, self.network.grade(image).float()
        terms = {}
        graded, masked = labelled["grade"], labelled["regions"]
        if graded.any():
            terms["grade"] = self.grade_criterion(grade_logits[graded], grades[graded])
            probabilities = grade_logits[graded].detach().softmax(1)
            self.class_metrics.update("train", probabilities, grades[graded])
        if masked.any():
            logits = regions[masked]
            if self.deep_supervision:
                logits = list(torch.unbind(logits, dim=1))  # the final output, then each head's
            terms["regions"] = self.criterion(logits, batch["label"][masked])
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        terms = self.loss_terms(batch)
        batch_size = len(batch["image"])
        for term, items in self.labelled(batch).items():
            cases = {
                case for case, used in zip(batch["case_id"], items.tolist(), strict=True) if used
            }
            self.log(CASE_COUNTS[term], float(len(cases)), on_step=False, on_epoch=True,
                     reduce_fx="sum", batch_size=batch_size)  # fmt: skip
            if term in terms:
                self._log_term("train", term, terms[term], int(items.sum()))
            if self.trains(term):
                weight = self.weight(term).detach()
                self.log(f"train/weight_{term}", weight, on_step=False, on_epoch=True,
                         batch_size=batch_size)  # fmt: skip
        if not terms:
            return None  # nothing in this batch is labelled for a task that trains
        loss = self.combined_loss(terms)
        super().log_loss("train", loss, batch_size)
        return loss

    def _log_term(self, stage: str, term: str, loss: torch.Tensor, batch_size: int) -> None:
        mean = self.term_losses[f"{stage}_{term}"]
        mean.update(loss.detach(), weight=batch_size)
        self.log(f"{stage}/loss_{term}", mean, on_step=False, on_epoch=True, batch_size=batch_size)

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        # VolumeSegmenter's evaluation reports its loss here: in this task, the regions term.
        self._log_term(stage, "regions", loss, batch_size)

    def _evaluate(self, batch: dict, stage: str) -> dict:
        masked = batch[HAS_MASK_KEY].bool()
        if masked.any() != masked.all():
            raise ValueError(
                "an evaluation batch mixes cases with and without label maps; evaluate one case "
                "per batch, as BratsMultitaskData's loaders do"
            )
        with self._collect_grades(len(masked)) as grade_logits:
            if masked.all() and self.trains("regions"):
                output = super()._evaluate(batch, stage)
            else:
                output = self._regions_unscored(batch)
        grade_logits = grade_logits[0]
        grades = batch[GRADE_KEY]
        graded = grades != NO_GRADE
        if graded.any() and self.trains("grade"):
            loss = self.grade_criterion(grade_logits[graded], grades[graded])
            self._log_term(stage, "grade", loss, int(graded.sum()))
            self.class_metrics.update(stage, grade_logits[graded].softmax(1), grades[graded])
        return output

    def _regions_unscored(self, batch: dict) -> dict:
        """The sliding window over cases whose regions are not scored: without label maps, or
        in a run that does not train them; what the figures draw."""
        image = convert_to_tensor(batch["image"], track_meta=False)
        masks = (torch.sigmoid(self.sliding_window_logits(image)) > self.threshold).float()
        label = convert_to_tensor(batch["label"], track_meta=False)
        return {"image": image, "label": label, "prediction": masks}

    def on_train_epoch_end(self) -> None:
        if self._has_class_updates("train"):
            self.class_metrics.log_epoch(self, "train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: str) -> None:
        if self.region_metrics[f"{stage}_regions"].update_count:
            self._log_region_metrics(stage)
        if self._has_class_updates(stage):
            self.class_metrics.log_epoch(self, stage)
        # The weighted sum of the terms' means over the epoch's cases (each term over its own).
        means = {
            term: self.term_losses[f"{stage}_{term}"]
            for term in TERMS
            if self.term_losses[f"{stage}_{term}"].update_count
        }
        if means:
            total = sum(self.weight(term).detach() * mean.compute() for term, mean in means.items())
            self.log(f"{stage}/loss", total, sync_dist=True)

    def _has_class_updates(self, stage: str) -> bool:
        return bool(self.class_metrics.supports[f"{stage}_support"].update_count)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Each case's label map on its files' grid (as :class:`VolumeSegmenter`) and its grade
        probabilities."""
        with self._collect_grades(len(batch["case_id"])) as grade_logits:
            label_maps = super().predict_step(batch, batch_idx)
        return {
            "label_maps": label_maps,
            "case_id": list(batch["case_id"]),
            "probabilities": grade_logits[0].softmax(1),
        }

    def configure_callbacks(self) -> list[L.Callback]:
        callbacks = super().configure_callbacks()
        return [
            *(c for c in callbacks if not isinstance(c, SegmentationWriter)),
            RegionMapsWriter(self.submission_names),
            GradesWriter(),
        ]


class RegionMapsWriter(SegmentationWriter):
    """:class:`SegmentationWriter` of the label maps of :class:`VolumeMultitask`'s predictions."""

    def write_on_batch_end(self, trainer, pl_module, prediction, *args) -> None:
        super().write_on_batch_end(trainer, pl_module, prediction["label_maps"], *args)
        # Written: Lightning keeps each batch's prediction until the epoch ends, for the grades.
        prediction["label_maps"] = None


class GradesWriter(ClassPredictionWriter):
    """:class:`ClassPredictionWriter` of the grades of :class:`VolumeMultitask`'s predictions,
    ``predictions.csv`` with a column per grade (``p_LGG``, ``p_HGG``)."""

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        grades = SimpleNamespace(class_names=pl_module.grade_names)
        super().write_on_epoch_end(trainer, grades, predictions, batch_indices)
