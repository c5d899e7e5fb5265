"""The Lightning data module for segmenting BraTS tumours into TC, WT and ET regions."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from monai.data import DataLoader
from monai.transforms import Compose

from resnext3d.data.datamodule import BratsDataModule
from resnext3d.data.file_checks import LabelMapUse
from resnext3d.data.layouts import BratsCase
from resnext3d.data.regions import REGIONS
from resnext3d.data.releases import Release
from resnext3d.data.transforms import (
    CASE_ID_KEY,
    IMAGE_KEY,
    LABEL_KEY,
    RELEASE_KEY,
    segmentation_transforms,
)


class BratsSegmentationData(BratsDataModule):
    """BraTS cases with their label maps as TC, WT, ET region masks.

    Training batches hold ``samples_per_case`` random crops of ``roi_size`` from each of
    ``batch_size`` cases, half of them centred on tumour: ``image`` (B, 4, *roi_size) with the
    channels in ``MODALITIES`` order and ``label`` (B, 3, *roi_size) float masks of TC, WT, ET,
    where B = batch_size × samples_per_case. Validation, test and predict batches hold one
    whole (head-cropped) volume each, for sliding-window inference; predict batches keep the
    image's metadata so that masks can be written on the original grid. Every batch has
    ``case_id`` and ``release`` (which label values the case's files use).

    Args:
        samples_per_case: random crops drawn from each training case per epoch.
        **kwargs: the arguments of :class:`BratsDataModule` (data_dir, roi_size, spacing, ...).
    """

    def __init__(self, samples_per_case: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.samples_per_case = samples_per_case

    @property
    def class_names(self) -> list[str]:
        """The predicted regions, in channel order."""
        return list(REGIONS)

    @property
    def num_classes(self) -> int:
        return len(REGIONS)

    @cached_property
    def release(self) -> Release:
        """The label-value convention of the data set's files."""
        return self.all_cases[0].release

    def _label_map_use(self, stage: str) -> LabelMapUse:
        # Prediction needs none; the other stages score against every case's.
        return "unused" if stage == "predict" else "required"

    def _strata(self) -> dict[str, str]:
        # Keeps both grades in proportion where the layout records them (BraTS 2018/19).
        return {case.case_id: case.grade or "all" for case in self.all_cases}

    def _item(self, case: BratsCase) -> dict:
        item = {
            IMAGE_KEY: [str(path) for path in case.images],
            CASE_ID_KEY: case.case_id,
            RELEASE_KEY: case.release,
        }
        if case.label_map is not None:
            item[LABEL_KEY] = str(case.label_map)
        return item

    def _transforms(self, stage: Literal["train", "val", "predict"]) -> Compose:
        return segmentation_transforms(
            stage, self.release, self.roi_size, self.spacing, self.samples_per_case
        )

    def val_dataloader(self) -> DataLoader:
        # Whole volumes differ in size: one per batch.
        return self._loader(self._datasets["val"], batch_size=1)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["predict"], batch_size=1)
