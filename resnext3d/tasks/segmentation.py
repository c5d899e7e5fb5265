"""Volume segmentation into overlapping regions (BraTS TC, WT, ET): a ResNeXt UNet with sigmoid
outputs, Dice+CE or Dice+Focal loss, sliding-window inference and per-region Dice and HD95."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.utils import convert_to_tensor
from torchmetrics import MeanMetric

from resnext3d.callbacks import SegmentationFigures, SegmentationWriter
from resnext3d.models.decoder import ResNeXtUNet
from resnext3d.models.resnext import LayerSpec
from resnext3d.performance import ChannelsLast
from resnext3d.tasks.base import VolumeTask, fused_adamw

LOSSES = {"dice_ce": DiceCELoss, "dice_focal": DiceFocalLoss}


class VolumeSegmenter(VolumeTask):
    """Segments volumes into ``num_classes`` possibly overlapping regions, one sigmoid each.

    Logs ``{train,val,test}/loss`` and, per region, ``val/dice_<region>``, ``val/hd95_<region>``
    (mm), with ``val/dice_mean`` and ``val/hd95_mean``. Dice follows the BraTS convention (an
    empty region predicted empty scores 1); HD95 is left out of the mean where either the truth
    or the prediction is empty, where it is undefined.

    Args:
        encoder: a ``features_only`` :class:`resnext3d.ResNeXt`; a UNet decoder is built on it.
        num_classes: number of region channels (linked from the data module by the CLI).
        class_names: region names in channel order, used in metric names.
        decoder_channels: channels of each decoder stage, deepest first.
        decoder_norm: norm of every decoder layer, by MONAI name.
        upsample: decoder upsampling, ``"deconv"`` or ``"nontrainable"`` (see ResNeXtUNet).
        deep_supervision: also supervise two intermediate decoder stages (weights 1, ½, ¼).
        loss: ``"dice_ce"`` (Dice + binary cross-entropy) or ``"dice_focal"``.
        sliding_window_size: window of the sliding-window inference, a multiple of 32.
        sliding_window_batch_size: windows run at once.
        overlap: overlap of neighbouring windows.
        threshold: probability above which a voxel belongs to a region.
        optimizer, scheduler, channels_last, compile: see :class:`VolumeTask`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 3,
        class_names: Sequence[str] | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_norm: LayerSpec = "instance",
        upsample: Literal["deconv", "nontrainable"] = "deconv",
        deep_supervision: bool = False,
        loss: Literal["dice_ce", "dice_focal"] = "dice_ce",
        sliding_window_size: Sequence[int] = (64, 64, 64),
        sliding_window_batch_size: int = 2,
        overlap: float = 0.5,
        threshold: float = 0.5,
        optimizer: OptimizerCallable = fused_adamw,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: ChannelsLast = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, channels_last, compile)
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for {num_classes} classes")
        self.net = ResNeXtUNet(
            encoder,
            in_channels=encoder.get_submodule(encoder.first_conv).in_channels,
            out_channels=num_classes,
            spatial_dims=encoder.spatial_dims,
            decoder_channels=decoder_channels,
            norm=decoder_norm,
            upsample=upsample,
            deep_supervision=deep_supervision,
        )
        # Dice over the whole batch (as nnU-Net): crops without a region do not dominate the loss.
        region_loss = LOSSES[loss](sigmoid=True, batch=True)
        self.loss = DeepSupervisionLoss(region_loss) if deep_supervision else region_loss
        self.deep_supervision = deep_supervision
        self.spatial_dims = encoder.spatial_dims
        self.sliding_window_size = tuple(sliding_window_size)
        self.sliding_window_batch_size = sliding_window_batch_size
        self.overlap = overlap
        self.threshold = threshold
        # torchmetrics means average every case of every rank once; MONAI computes the values.
        names = [name.lower() for name in self.class_names] + ["mean"]
        self.epoch_means = nn.ModuleDict(
            {
                # HD95 is NaN where undefined (an empty region), and left out of the mean.
                f"{stage}_{kind}_{name}": MeanMetric(nan_strategy="ignore")
                for stage in ("val", "test")
                for kind in ("dice", "hd95")
                for name in names
            }
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Float32 logits under mixed precision too: the loss, sigmoid and metrics need them.
        return self.net(image.contiguous(memory_format=self.memory_format)).float()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        targets = batch["label"]
        if self.deep_supervision:
            loss = self.loss(list(torch.unbind(logits, dim=1)), targets)
        else:
            loss = self.loss(logits, targets)
        self.log_loss("train", loss, len(targets))
        return loss

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Region probabilities of whole volumes by overlapping sliding windows."""
        logits = sliding_window_inference(
            image,
            roi_size=self.sliding_window_size,
            sw_batch_size=self.sliding_window_batch_size,
            predictor=self,
            overlap=self.overlap,
            mode="gaussian",
        )
        return torch.sigmoid(logits)

    def _evaluate(self, batch: dict, stage: str) -> dict:
        # Plain tensors from here on: MONAI's MetaTensors would make every metric, and so the
        # monitored score in the checkpoints, a MetaTensor that weights-only loading refuses.
        spacing = _voxel_spacing(batch["image"])
        image, targets = (convert_to_tensor(batch[k], track_meta=False) for k in ("image", "label"))
        probabilities = self.predict_probabilities(image)
        loss = self.loss.loss if self.deep_supervision else self.loss
        # The loss takes logits; recover them from the blended probabilities.
        value = loss(torch.logit(probabilities.clamp(1e-6, 1 - 1e-6)), targets)
        self.log_loss(stage, value, len(targets))
        masks = (probabilities > self.threshold).float()
        dice = compute_dice(masks, targets, include_background=True, ignore_empty=False)
        with warnings.catch_warnings():
            # MONAI warns of each empty region (handled below) and of its own deprecations.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            hd95 = compute_hausdorff_distance(
                masks,
                targets,
                percentile=95,
                include_background=True,
                spacing=spacing,
            )
        hd95[~torch.isfinite(hd95)] = torch.nan  # empty truth or prediction: undefined
        names = [name.lower() for name in self.class_names]
        for kind, values in (("dice", dice), ("hd95", hd95)):
            for channel, name in enumerate(names):
                self.epoch_means[f"{stage}_{kind}_{name}"].update(values[:, channel])
            self.epoch_means[f"{stage}_{kind}_mean"].update(values.nanmean(dim=1))
        for key, metric in self.epoch_means.items():
            if key.startswith(f"{stage}_"):
                self.log(key.replace("_", "/", 1), metric, on_epoch=True, batch_size=len(targets))
        return {"loss": value, "image": image, "label": targets, "prediction": masks}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.predict_probabilities(batch["image"])

    @property
    def network(self) -> nn.Module:
        """What ``compile`` compiles: the UNet."""
        return self.net

    def configure_callbacks(self) -> list[L.Callback]:
        return [
            *super().configure_callbacks(),
            SegmentationWriter(self.threshold),
            SegmentationFigures(self.class_names),
        ]


def _voxel_spacing(image: torch.Tensor) -> list[float] | None:
    """The voxel size in mm from a MetaTensor's affine (None for plain tensors: voxels)."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    affine = affine[0] if affine.ndim == 3 else affine
    spatial_dims = image.ndim - 2
    return torch.linalg.norm(affine[:spatial_dims, :spatial_dims].double(), dim=0).tolist()
