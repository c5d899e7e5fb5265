"""Volume segmentation into overlapping regions (BraTS TC, WT, ET): a network with one logit per
region, a loss on those logits, sliding-window inference, label maps on each case's own grid and
the challenge's per-region scores of them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from monai.data import MetaTensor, decollate_batch
from monai.data.utils import affine_to_spacing
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceFocalLoss
from monai.transforms import SpatialResample
from monai.utils import convert_to_tensor

from resnext3d.data.regions import labels_to_regions, regions_to_labels
from resnext3d.data.releases import Release
from resnext3d.evaluation.evaluate import read_label_map
from resnext3d.tasks.base import RUNTIME_ARGUMENTS, VolumeTask, fused_adamw
from resnext3d.tasks.postprocessing import RegionPostprocessing
from resnext3d.tasks.region_metrics import RegionMetrics
from resnext3d.training.callbacks import (
    CaseScoresWriter,
    SegmentationFigures,
    SegmentationWriter,
)
from resnext3d.training.performance import ChannelsLast

# How validation, test and predict run: chosen when evaluating, not restored from a checkpoint.
INFERENCE_ARGUMENTS = (
    "sliding_window_size",
    "sliding_window_batch_size",
    "overlap",
    "threshold",
    "mirror_axes",
    "postprocessing",
    "submission_names",
    "scoring_grid",
)
ScoringGrid = Literal["original", "resampled"]


def thresholded_on_file_grid(
    probabilities: torch.Tensor, image: MetaTensor, threshold: float
) -> torch.Tensor:
    """The masks (regions, *files' grid, bool) of `probabilities` (regions, *spatial) on the
    grid of `image` (with its files' metadata) resampled (bilinear) onto its files' grid and
    thresholded (``> threshold``).

    Only the box around the voxels above the threshold is resampled, the rest of the files' grid
    is False: a bilinear value is a weighted mean of its 8 neighbours (0 beyond the volume), so
    it exceeds the threshold only where one of them does, and those neighbours all lie in the box
    grown by a voxel. A tumour fills a small part of a head, and the whole files' grid (1 mm
    BraTS, 8.9 M voxels) took most of a case's post-processing time."""
    file_shape = [int(size) for size in image.meta["spatial_shape"]][: probabilities.ndim - 1]
    masks = torch.zeros(probabilities.shape[0], *file_shape, dtype=torch.bool)
    above = (probabilities > threshold).any(0).nonzero()
    if len(above) == 0:
        return masks
    grid_shape = torch.tensor(probabilities.shape[1:])
    start = (above.min(0).values - 1).clamp(min=0)
    stop = torch.minimum(above.max(0).values + 2, grid_shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    crop_affine = image.affine.double() @ _translation(start)
    # The box's corners on the files' grid, then the files' voxels that cover them.
    corners = torch.cartesian_prod(*[torch.tensor([0.0, float(b - a - 1)]) for a, b in
                                     zip(start, stop, strict=True)])  # fmt: skip
    corners = torch.cat([corners.double(), torch.ones(len(corners), 1, dtype=torch.float64)], 1)
    file_affine = torch.as_tensor(image.meta["original_affine"], dtype=torch.float64)
    to_file = torch.linalg.solve(file_affine, crop_affine)
    on_file = (corners @ to_file.T)[:, :-1]
    file_start = on_file.min(0).values.floor().clamp(min=0).long()
    file_stop = torch.minimum(on_file.max(0).values.ceil().long() + 1, torch.tensor(file_shape))
    if (file_stop <= file_start).any():
        return masks
    file_box = tuple(slice(int(a), int(b)) for a, b in zip(file_start, file_stop, strict=True))
    # As resnext3d.data.transforms.to_file_grid resamples.
    resample = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
    resampled = resample(
        MetaTensor(probabilities[(slice(None), *box)], affine=crop_affine),
        dst_affine=file_affine @ _translation(file_start),
        spatial_size=(file_stop - file_start).tolist(),
    )
    masks[(slice(None), *file_box)] = resampled.as_tensor() > threshold
    return masks


def _translation(voxels: torch.Tensor) -> torch.Tensor:
    """The affine that moves a grid's origin to its voxel `voxels`."""
    matrix = torch.eye(len(voxels) + 1, dtype=torch.float64)
    matrix[:-1, -1] = voxels.double()
    return matrix


class VolumeSegmenter(VolumeTask):
    """Segments volumes into possibly overlapping regions, one sigmoid each.

    Logs ``{train,val,test}/loss`` and, per region, the legacy ``val/dice_<region>``,
    ``val/hd95_<region>`` (mm) and the challenge's lesion-wise ``val/lesion_dice_<region>``,
    ``val/lesion_hd95_<region>``, with their ``_mean`` over regions (see :class:`RegionMetrics`);
    each case's scores are written by :class:`CaseScoresWriter`.

    Validation and test score what ``predict`` writes, as the challenge scores it: each case's
    probabilities resampled onto the grid of its files, thresholded, post-processed and written
    as a label map in its release's values (so the regions are nested), against the case's own
    label file, HD95 in mm of the files' voxels (``scoring_grid="original"``).

    Args:
        network: the segmentation network, returning one logit map per region, e.g. a
            :class:`resnext3d.ResNeXtUNet` or a MONAI network (its ``in_channels`` and
            ``out_channels`` linked from the data module by the CLI). With ``deep_supervision``
            set on the network, its heads are supervised too (weights 1, ½, ¼, … by MONAI's
            ``DeepSupervisionLoss``).
        criterion: the loss function of region logits and binary region masks, e.g. a MONAI
            loss; by default Dice over the batch plus binary cross-entropy per region.
        class_names: region names in channel order, used in metric names (linked).
        sliding_window_size: window of the sliding-window inference; None for the size of the
            training crops (the data module's ``roi_size``).
        sliding_window_batch_size: windows run at once.
        overlap: overlap of neighbouring windows.
        threshold: probability above which a voxel belongs to a region.
        mirror_axes: spatial axes (0, 1, 2) to mirror at inference, nnU-Net's test-time
            augmentation: the logits are averaged over every combination of flips (2^k passes).
        postprocessing: cleans the masks of validation, test and predict (e.g.
            :class:`RegionPostprocessing`); validation and test then log each metric both raw
            and post-processed (``val/dice_et`` and ``val/dice_et_pp``).
        submission_names: ``predict`` names its files ``<case_id>.nii.gz``, as a BraTS
            challenge submission expects, instead of ``<case_id>_seg.nii.gz``.
        scoring_grid: ``"original"``, validation and test score the label maps ``predict``
            writes, on each case's own grid (above); ``"resampled"``, the cheaper scores of the
            thresholded (and post-processed) masks on the grid the network sees, the training
            ``spacing``, against the resampled reference; not what the challenge reports.
        optimizer, scheduler, layer_decay, channels_last, compile: see :class:`VolumeTask`.
    """

    checkpoint_monitor = ("val/dice_mean", "max")

    def __init__(
        self,
        network: nn.Module,
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
        super().__init__(optimizer, scheduler, channels_last, compile, layer_decay)
        self.save_hyperparameters(
            ignore=["network", "criterion", *INFERENCE_ARGUMENTS, *RUNTIME_ARGUMENTS]
        )
        self.network = network
        # Any MONAI network serves; not all of them say how many channels they return.
        num_classes = getattr(network, "out_channels", None) or len(class_names or ())
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for {num_classes} regions")
        # Dice over the whole batch (as nnU-Net): crops without a region do not dominate the loss.
        # Per-region binary cross-entropy (focal with gamma 0): overlapping regions are not
        # exclusive classes, as the softmax cross-entropy of DiceCELoss would take them.
        if criterion is None:
            criterion = DiceFocalLoss(sigmoid=True, batch=True, gamma=0.0)
        self.deep_supervision = getattr(network, "deep_supervision", False)
        self.criterion = DeepSupervisionLoss(criterion) if self.deep_supervision else criterion
        self.sliding_window_size = sliding_window_size
        self.sliding_window_batch_size = sliding_window_batch_size
        self.overlap = overlap
        self.threshold = threshold
        self.mirror_axes = tuple(mirror_axes)
        self.postprocessing = postprocessing
        self.submission_names = submission_names
        if scoring_grid not in ("original", "resampled"):
            raise ValueError(
                f"scoring_grid must be 'original' or 'resampled', got {scoring_grid!r}"
            )
        self.scoring_grid = scoring_grid
        variants = ("", "_pp") if postprocessing is not None else ("",)
        self.region_metrics = nn.ModuleDict(
            {
                f"{stage}_regions{variant}": RegionMetrics(self.class_names)
                for stage in ("val", "test")
                for variant in variants
            }
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Float32 logits under mixed precision too: the loss, sigmoid and metrics need them.
        return self.network(image).float()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        targets = batch["label"]
        if self.deep_supervision:
            logits = list(torch.unbind(logits, dim=1))  # the final output, then each head's
        loss = self.criterion(logits, targets)
        self.log_loss("train", loss, len(targets))
        return loss

    def sliding_window_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Region logits of whole volumes, blended over overlapping sliding windows, and
        averaged over the mirrorings of `mirror_axes`."""
        window = self.sliding_window_size or self.trainer.datamodule.roi_size
        flips = [
            [axis + 2 for axis in axes]
            for count in range(len(self.mirror_axes) + 1)
            for axes in itertools.combinations(self.mirror_axes, count)
        ]
        total = 0
        for dims in flips:
            mirrored = image.flip(dims) if dims else image
            logits = sliding_window_inference(
                mirrored,
                roi_size=tuple(window),
                sw_batch_size=self.sliding_window_batch_size,
                predictor=self,
                overlap=self.overlap,
                mode="gaussian",
            )
            total = total + (logits.flip(dims) if dims else logits)
        return total / len(flips)

    def _evaluate(self, batch: dict, stage: str) -> dict:
        # Plain tensors from here on: MONAI's MetaTensors would make every metric, and so the
        # monitored score in the checkpoints, a MetaTensor that weights-only loading refuses.
        image, targets = (convert_to_tensor(batch[k], track_meta=False) for k in ("image", "label"))
        logits = self.sliding_window_logits(image)
        criterion = self.criterion.loss if self.deep_supervision else self.criterion
        loss = criterion(logits, targets)
        self.log_loss(stage, loss, len(targets))
        probabilities = torch.sigmoid(logits)
        if self.scoring_grid == "resampled":
            # The voxel size in mm where the batch has its files' metadata, else in voxels.
            with_meta = isinstance(batch["image"], MetaTensor)
            spacing = batch["image"].pixdim[0].tolist() if with_meta else None
            raw, masks = self._masks(probabilities, spacing)
            self._score(stage, raw, masks, targets, spacing, batch["case_id"])
        else:
            # Post-processed on the files' grid only, where it is scored; the figure shows the
            # thresholded masks of the network's grid.
            masks = (probabilities > self.threshold).float()
            cases = zip(
                batch["case_id"],
                probabilities,
                decollate_batch(batch["image"]),
                batch["release"],
                batch["label"].meta["filename_or_obj"],  # the label files
                strict=True,
            )
            for case in cases:
                self._score_on_file_grid(stage, *case)
        return {"loss": loss, "image": image, "label": targets, "prediction": masks}

    def _masks(
        self, probabilities: torch.Tensor, spacing: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The thresholded masks, and the post-processed ones (the same without post-processing)."""
        raw = (probabilities > self.threshold).float()
        if self.postprocessing is None:
            return raw, raw
        return raw, self.postprocessing(raw, self.class_names, spacing)

    def label_maps(
        self, probabilities: torch.Tensor, image: MetaTensor, release: Release
    ) -> tuple[MetaTensor, MetaTensor, list[float]]:
        """One case's label maps on the grid of its files, as ``predict`` writes them: its
        region probabilities (regions, *spatial) on the grid of `image` (a decollated batch item
        with its files' metadata) resampled onto the files' grid, thresholded, and written in the
        `release`'s label values, raw and post-processed; with the files' voxel size in mm."""
        raw = thresholded_on_file_grid(probabilities, image, self.threshold)[None]
        affine = image.meta["original_affine"]
        spacing = affine_to_spacing(affine).tolist()
        masks = raw
        if self.postprocessing is not None:
            masks = self.postprocessing(raw, self.class_names, spacing)
        label_maps = [
            MetaTensor(regions_to_labels(regions[0], release), affine=affine)
            for regions in (raw, masks)
        ]
        return *label_maps, spacing

    def _score_on_file_grid(
        self,
        stage: str,
        case_id: str,
        probabilities: torch.Tensor,
        image: MetaTensor,
        release: Release,
        reference_file: str,
    ) -> None:
        raw, masks, _ = self.label_maps(probabilities, image, release)
        # The reference's voxels and spacing as `resnext3d evaluate` reads them.
        reference, spacing = read_label_map(Path(reference_file))
        reference = labels_to_regions(
            torch.from_numpy(reference), release, reference_file, dtype=torch.uint8
        )
        if reference.shape[1:] != raw.shape[1:]:
            raise ValueError(
                f"{reference_file}: label map of shape {tuple(reference.shape[1:])}, its images' "
                f"{tuple(raw.shape[1:])}"
            )
        raw, masks = (
            labels_to_regions(label_map.as_tensor(), release, dtype=torch.uint8)
            for label_map in (raw, masks)
        )
        self._score(stage, raw[None], masks[None], reference[None], spacing, [case_id])

    def _score(
        self,
        stage: str,
        raw: torch.Tensor,
        masks: torch.Tensor,
        targets: torch.Tensor,
        spacing: Sequence[float] | None,
        case_ids: Sequence[str],
    ) -> None:
        self.region_metrics[f"{stage}_regions"].update(raw, targets, spacing, case_ids)
        if self.postprocessing is not None:
            self.region_metrics[f"{stage}_regions_pp"].update(masks, targets, spacing, case_ids)

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_region_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_region_metrics("test")

    def _log_region_metrics(self, stage: str) -> None:
        for key, metrics in self.region_metrics.items():
            if not key.startswith(f"{stage}_"):
                continue
            suffix = "_pp" if key.endswith("_pp") else ""
            # Gathered from every rank by compute(); the reduction of equal values is a no-op.
            self.log_dict(
                {f"{stage}/{name}{suffix}": value for name, value in metrics.compute().items()},
                sync_dist=True,
            )
            metrics.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> list[MetaTensor]:
        """Each case's label map on its files' grid (see :meth:`label_maps`)."""
        image = convert_to_tensor(batch["image"], track_meta=False)
        probabilities = torch.sigmoid(self.sliding_window_logits(image))
        cases = zip(probabilities, decollate_batch(batch["image"]), batch["release"], strict=True)
        return [self.label_maps(*case)[1] for case in cases]

    def configure_callbacks(self) -> list[L.Callback]:
        return [
            *super().configure_callbacks(),
            SegmentationWriter(self.submission_names),
            CaseScoresWriter(),
            SegmentationFigures(self.class_names),
        ]
