"""Volume classification: an encoder, a linear head, cross-entropy and torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
)

from resnext3d.callbacks import ClassPredictionWriter
from resnext3d.performance import ChannelsLast
from resnext3d.tasks.base import VolumeTask, fused_adamw


class VolumeClassifier(VolumeTask):
    """Classifies whole volumes; logs ``{train,val,test}/{loss,acc,balanced_acc,auroc,f1}``.

    Args:
        encoder: a network with ``reset_classifier`` and ``num_features``, e.g.
            :class:`resnext3d.ResNeXt`; its own classifier is replaced by this task's head.
        num_classes: number of classes (linked from the data module by the CLI).
        class_names: names of the classes in index order, written by ``predict``.
        class_weights: cross-entropy weight of each class, for imbalanced data.
        label_smoothing: cross-entropy label smoothing.
        head_dropout: dropout before the linear head.
        optimizer, scheduler, channels_last, compile: see :class:`VolumeTask`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        head_dropout: float = 0.0,
        optimizer: OptimizerCallable = fused_adamw,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: ChannelsLast = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, channels_last, compile)
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} entries for {num_classes} classes"
            )
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.encoder = encoder
        self.spatial_dims = getattr(encoder, "spatial_dims", 3)
        encoder.reset_classifier(0)
        self.head = nn.Sequential(
            nn.Dropout(head_dropout), nn.Linear(encoder.num_features, num_classes)
        )
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "balanced_acc": MulticlassRecall(num_classes, average="macro"),
                "auroc": MulticlassAUROC(num_classes),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.encoder(image.contiguous(memory_format=self.memory_format))
        # Float32 logits under mixed precision too: the loss, softmax and metrics need them.
        return self.head(features).float()

    def _shared_step(self, batch: dict, stage: str, metrics: MetricCollection) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"])
        metrics.update(logits.softmax(dim=1), batch["label"])
        batch_size = len(batch["label"])
        self.log_loss(stage, loss, batch_size)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_metrics)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"case_id": list(batch["case_id"]), "probabilities": self(batch["image"]).softmax(1)}

    @property
    def network(self) -> nn.Module:
        """What ``compile`` compiles: the encoder (the head is one linear layer)."""
        return self.encoder

    def configure_callbacks(self) -> list[L.Callback]:
        return [ClassPredictionWriter()]
