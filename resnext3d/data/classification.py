"""The Lightning data module for classifying BraTS cases (tumour grade, MGMT status, ...)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from resnext3d.data.labels import assign_labels, find_labels
from resnext3d.data.layouts import MODALITIES, BratsCase, discover_cases
from resnext3d.data.phantom import ensure_phantom
from resnext3d.data.splits import Split, holdout_split, kfold_split, save_split
from resnext3d.data.transforms import (
    CASE_ID_KEY,
    IMAGE_KEY,
    LABEL_KEY,
    data_errors_unwrapped,
    deterministic_transforms,
    training_transforms,
)
from resnext3d.data.validation import validate_cases

log = logging.getLogger(__name__)

# Relative to the working directory, i.e. the repository's git-ignored data/ when run from there.
PHANTOM_DIR = Path("data/phantom_brats")
DEFAULT_CACHE_DIR = Path("data/cache")
# The phantom does not change with the split seed, so that every run reuses the one on disk.
PHANTOM_SEED = 0


@dataclass(frozen=True)
class _LabelledCases:
    cases: tuple[BratsCase, ...]
    labels: dict[str, str]
    class_names: tuple[str, ...]


class BratsClassificationData(L.LightningDataModule):
    """BraTS cases with one class label each, split into training and validation cases.

    Batches hold ``image`` (B, 4, *roi_size) float32 with the channels in ``MODALITIES`` order
    (flair, t1, t1ce, t2), ``label`` (B,) long indices into `class_names`, and ``case_id``, a
    list of B strings. The test stage uses the validation cases: BraTS has no labelled test set.

    Args:
        data_dir: a BraTS 2018-2021, BraTS 2023 or Decathlon Task01 folder. None trains on a
            synthetic phantom generated once in ./data/phantom_brats.
        labels: a CSV of class labels: a BraTS 2020 name_mapping.csv, the RSNA-MICCAI MGMT
            train_labels.csv or any CSV with `id_column` and `label_column`. None uses the
            name_mapping.csv in data_dir, or else the BraTS 2018/19 HGG/LGG folders.
        label_column: the CSV column of the labels; None for the known label files.
        id_column: the CSV column of the case ids; None for the known label files.
        drop_unlabelled: leave out cases the labels do not mention (e.g. BraTS 2021 cases without
            an MGMT label) instead of failing.
        roi_size: the size every image is resized to, in voxels.
        spacing: the voxel size images are resampled to before cropping and resizing, in mm.
        batch_size: cases per batch.
        num_workers: data loading processes (and caching threads).
        val_fraction: the share of each class held out for validation when `fold` is None.
        seed: the seed of the split.
        fold: validate on this fold of a stratified k-fold split; None for a hold-out split.
        num_folds: the number of folds when `fold` is set.
        cache: keep preprocessed cases in "memory", on "disk" under `cache_dir`, or "none".
        cache_dir: the folder of the disk cache; None for ./data/cache.
        phantom_cases: the number of phantom cases when `data_dir` is None.
        predict_split: the cases to predict: the validation cases ("val") or all cases ("all").
    """

    def __init__(
        self,
        data_dir: str | None = None,
        labels: str | None = None,
        label_column: str | None = None,
        id_column: str | None = None,
        drop_unlabelled: bool = False,
        roi_size: tuple[int, int, int] = (64, 64, 64),
        spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
        batch_size: int = 4,
        num_workers: int = 2,
        val_fraction: float = 0.2,
        seed: int = 0,
        fold: int | None = None,
        num_folds: int = 5,
        cache: Literal["memory", "disk", "none"] = "memory",
        cache_dir: str | None = None,
        phantom_cases: int = 100,
        predict_split: Literal["val", "all"] = "all",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.labels = labels
        self.label_column = label_column
        self.id_column = id_column
        self.drop_unlabelled = drop_unlabelled
        self.roi_size = tuple(roi_size)
        self.spacing = tuple(spacing)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.fold = fold
        self.num_folds = num_folds
        self.cache = cache
        self.cache_dir = cache_dir
        self.phantom_cases = phantom_cases
        self.predict_split = predict_split
        self._datasets: dict[str, Dataset] = {}
        if data_dir is None:
            log.warning(
                "\n%s\nNo data_dir given: training on a SYNTHETIC BraTS phantom (%d cases in %s), "
                "not on real data.\nPoint it at real BraTS with `DATA=/path/to/BraTS make train "
                "EXP=brats_cls` or `--data.data_dir /path/to/BraTS`.\n%s",
                "=" * 80,
                phantom_cases,
                PHANTOM_DIR.resolve(),
                "=" * 80,
            )

    @property
    def class_names(self) -> list[str]:
        """The class names in class-index order; for HGG/LGG, HGG is class 1 (the positive)."""
        return list(self._labelled.class_names)

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self._labelled.class_names)

    @property
    def in_channels(self) -> int:
        """The number of image channels: one per modality."""
        return len(MODALITIES)

    @cached_property
    def split(self) -> Split:
        """The training and validation case ids, stratified by class."""
        labels = self._labelled.labels
        if self.fold is None:
            return holdout_split(labels, self.val_fraction, self.seed)
        return kfold_split(labels, self.fold, self.num_folds, self.seed)

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node, before `setup` runs on every process.
        self._data_root()

    def setup(self, stage: str) -> None:
        """Validate the data, then build the datasets `stage` needs and save the split."""
        labelled = self._labelled
        validate_cases(labelled.cases)
        split = self.split
        items = {case.case_id: self._item(case) for case in labelled.cases}
        deterministic = deterministic_transforms(self.roi_size, self.spacing)
        if stage == "fit":
            training = training_transforms(self.roi_size, self.spacing)
            self._datasets["train"] = self._dataset([items[i] for i in split.train], training)
        if stage in ("fit", "validate", "test"):
            self._datasets["val"] = self._dataset([items[i] for i in split.val], deterministic)
        if stage == "predict":
            predicted = split.val if self.predict_split == "val" else sorted(items)
            self._datasets["predict"] = self._dataset([items[i] for i in predicted], deterministic)
        self._save_split(split)

    def train_dataloader(self) -> DataLoader:
        dataset = self._datasets["train"]
        # A short last batch may hold a single case, which batch normalisation cannot train on;
        # it is kept only when it is the one batch there is.
        return self._loader(dataset, shuffle=True, drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"])

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["predict"])

    @cached_property
    def _labelled(self) -> _LabelledCases:
        # Cheap (file names and a CSV), so the CLI can read class_names before training.
        data_dir = self._data_root()
        cases = discover_cases(data_dir)
        source = find_labels(data_dir, cases, self.labels, self.id_column, self.label_column)
        labels = assign_labels(cases, source, self.drop_unlabelled)
        labelled = tuple(case for case in cases if case.case_id in labels)
        return _LabelledCases(labelled, labels, source.class_names)

    def _data_root(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        return ensure_phantom(PHANTOM_DIR, self.phantom_cases, PHANTOM_SEED)

    def _item(self, case: BratsCase) -> dict:
        return {
            IMAGE_KEY: [str(path) for path in case.images],
            LABEL_KEY: self._labelled.class_names.index(self._labelled.labels[case.case_id]),
            CASE_ID_KEY: case.case_id,
        }

    def _dataset(self, items: Sequence[dict], transform: Compose) -> Dataset:
        if self.cache == "memory":
            # CacheDataset reads every case now, so a damaged file fails here, named.
            with data_errors_unwrapped():
                return CacheDataset(items, transform, num_workers=max(1, self.num_workers))
        if self.cache == "disk":
            return PersistentDataset(items, transform, cache_dir=self._disk_cache_dir())
        return Dataset(items, transform)

    def _disk_cache_dir(self) -> Path:
        # The cache key hashes the item (paths, label), not the preprocessing: keep one folder
        # per preprocessing setting.
        roi = "x".join(map(str, self.roi_size))
        spacing = "x".join(map(str, self.spacing))
        return Path(self.cache_dir or DEFAULT_CACHE_DIR) / f"roi{roi}_spacing{spacing}"

    def _loader(
        self, dataset: Dataset, shuffle: bool = False, drop_last: bool = False
    ) -> DataLoader:
        # MONAI's DataLoader seeds each worker's random transforms differently.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _save_split(self, split: Split) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero and trainer.log_dir is not None:
            save_split(split, trainer.log_dir)
