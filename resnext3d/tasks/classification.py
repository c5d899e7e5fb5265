"""Volume classification: an encoder, a linear head, cross-entropy and torchmetrics."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
    MulticlassStatScores,
)

from resnext3d.tasks.base import RUNTIME_ARGUMENTS, VolumeTask, fused_adamw
from resnext3d.training.callbacks import ClassPredictionWriter
from resnext3d.training.performance import ChannelsLast

STAGES = ("train", "val", "test")
# Averages over the classes: one without a case makes them meaningless.
UNDEFINED_WITHOUT_A_CLASS = ("balanced_acc", "auroc", "f1")


class VolumeClassifier(VolumeTask):
    """Classifies whole volumes; logs ``{train,val,test}/{loss,acc,balanced_acc,auroc,f1}``.

    Args:
        network: a classification network with a ``num_classes`` attribute, e.g. a
            :class:`resnext3d.ResNeXt` preset, whose own classifier (and its ``drop_rate``
            dropout) is the head; its ``in_channels`` and ``num_classes`` are linked from the
            data module by the CLI.
        class_names: names of the classes in index order, written by ``predict`` (linked).
        class_weights: cross-entropy weight of each class, for imbalanced data.
        label_smoothing: cross-entropy label smoothing.
        optimizer, scheduler, layer_decay, channels_last, compile: see :class:`VolumeTask`.
    """

    checkpoint_monitor = ("val/auroc", "max")

    def __init__(
        self,
        network: nn.Module,
        class_names: Sequence[str] | None = None,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = fused_adamw,
        scheduler: LRSchedulerCallable | None = None,
        layer_decay: float | None = None,
        channels_last: ChannelsLast = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, channels_last, compile, layer_decay)
        self.save_hyperparameters(ignore=["network", *RUNTIME_ARGUMENTS])
        num_classes = network.num_classes
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} entries for {num_classes} classes"
            )
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.network = network
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.class_metrics = ClassMetrics(self.class_names)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Float32 logits under mixed precision too: the loss, softmax and metrics need them.
        return self.network(image).float()

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        self.class_metrics.update(stage, logits.detach().softmax(dim=1), batch["label"])
        self.log_loss(stage, loss, len(batch["label"]))
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return {"loss": self._shared_step(batch, "val")}

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return {"loss": self._shared_step(batch, "test")}

    def on_train_epoch_end(self) -> None:
        self.class_metrics.log_epoch(self, "train")

    def on_validation_epoch_end(self) -> None:
        self.class_metrics.log_epoch(self, "val")

    def on_test_epoch_end(self) -> None:
        self.class_metrics.log_epoch(self, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"case_id": list(batch["case_id"]), "probabilities": self(batch["image"]).softmax(1)}

    def configure_callbacks(self) -> list[L.Callback]:
        return [*super().configure_callbacks(), ClassPredictionWriter()]


class ClassMetrics(nn.Module):
    """A classifier's metrics of each stage, ``<stage>/{acc,balanced_acc,auroc,f1}``, for any
    task that classifies (:class:`VolumeClassifier`, the multi-task one).

    Args:
        class_names: the classes in index order, named in the warning of undefined metrics.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "balanced_acc": MulticlassRecall(num_classes, average="macro"),
                "auroc": MulticlassAUROC(num_classes),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        # Keyed "<stage>_...": a ModuleDict key "train" would hide nn.Module.train.
        self.scores = nn.ModuleDict({f"{s}_scores": metrics.clone(prefix=f"{s}/") for s in STAGES})
        # Per-class counts of the targets, to tell which macro metrics are undefined.
        self.supports = nn.ModuleDict(
            {f"{s}_support": MulticlassStatScores(num_classes, average=None) for s in STAGES}
        )
        self._warned_undefined: set[str] = set()

    def update(self, stage: str, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores[f"{stage}_scores"].update(probabilities, labels)
        self.supports[f"{stage}_support"].update(probabilities, labels)

    def log_epoch(self, task: L.LightningModule, stage: str) -> None:
        """Log the stage's metrics over the epoch (every rank's cases) through `task`; those
        averaged over the classes are NaN, with a warning, when a class had no case: they are
        undefined then, where torchmetrics would report 0 and mean a perfectly wrong
        classifier."""
        metrics, supports = self.scores[f"{stage}_scores"], self.supports[f"{stage}_support"]
        with warnings.catch_warnings():
            # torchmetrics warns of each absent class; one warning below says it all.
            warnings.simplefilter("ignore", UserWarning)
            values = metrics.compute()
        support = supports.compute()[:, -1]  # the last of tp, fp, tn, fn, support
        absent = [name for name, n in zip(self.class_names, support, strict=True) if n == 0]
        if absent:
            for name in UNDEFINED_WITHOUT_A_CLASS:
                values[f"{stage}/{name}"] = torch.tensor(float("nan"))
            if stage not in self._warned_undefined and not task.trainer.sanity_checking:
                self._warned_undefined.add(stage)
                rank_zero_warn(
                    f"{stage}: no case of class {', '.join(absent)} this epoch, so "
                    f"{', '.join(UNDEFINED_WITHOUT_A_CLASS)} are undefined and logged as NaN"
                )
        # Already gathered from every rank by compute(); the reduction of equal values is a no-op
        # that keeps Lightning from warning about unsynchronised epoch metrics.
        task.log_dict(values, sync_dist=True)
        metrics.reset()
        supports.reset()
