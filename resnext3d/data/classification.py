"""The Lightning data module for classifying BraTS cases (tumour grade, MGMT status, ...)."""

from __future__ import annotations

from collections import Counter
from functools import cached_property
from typing import Literal, NamedTuple

from monai.transforms import Compose

from resnext3d.data.datamodule import BratsDataModule
from resnext3d.data.errors import raise_for_problems
from resnext3d.data.labels import check_labels
from resnext3d.data.layouts import BratsCase
from resnext3d.data.transforms import (
    CASE_ID_KEY,
    IMAGE_KEY,
    LABEL_KEY,
    deterministic_transforms,
    training_transforms,
)


class _LabelledCases(NamedTuple):
    labels: dict[str, str]  # by case id
    class_names: tuple[str, ...]


class BratsClassificationData(BratsDataModule):
    """BraTS cases with one class label each, split into training and validation cases.

    Batches hold ``image`` (B, 4, *roi_size) float32, the whole head resized, with the channels
    in ``MODALITIES`` order (flair, t1, t1ce, t2), ``label`` (B,) long indices into
    `class_names`, and ``case_id``, a list of B strings.

    Args:
        labels: a CSV of class labels: a BraTS 2020 name_mapping.csv, the RSNA-MICCAI MGMT
            train_labels.csv or any CSV with `id_column` and `label_column`. None uses the
            name_mapping.csv in data_dir, or else the BraTS 2018/19 HGG/LGG folders.
        label_column: the CSV column of the labels; None for the known label files.
        id_column: the CSV column of the case ids; None for the known label files.
        drop_unlabelled: leave out cases the labels do not mention (e.g. BraTS 2021 cases without
            an MGMT label) instead of failing.
        classes: the class names in class-index order; a label that is not one of them stops
            the run. None: the known label files' classes (LGG, HGG; 0, 1 for MGMT), else the
            labels found, sorted.
        **kwargs: the arguments of :class:`BratsDataModule` (data_dir, roi_size, spacing, ...).
    """

    def __init__(
        self,
        labels: str | None = None,
        label_column: str | None = None,
        id_column: str | None = None,
        drop_unlabelled: bool = False,
        classes: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.labels = labels
        self.label_column = label_column
        self.id_column = id_column
        self.drop_unlabelled = drop_unlabelled
        self.classes = classes

    @property
    def class_names(self) -> list[str]:
        """The class names in class-index order; for HGG/LGG, HGG is class 1 (the positive)."""
        return list(self._labelled.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def _labelled(self) -> _LabelledCases:
        # Read and matched to the cases at the first look (the CLI reads class_names to build
        # the model), so that every label problem stops the run before anything else.
        source, labels, problems = check_labels(
            self._data_root(),
            self.all_cases,
            self.labels,
            self.id_column,
            self.label_column,
            self.classes,
            self.drop_unlabelled,
        )
        raise_for_problems(problems, "the classification labels cannot be used")
        # The label file may name classes whose cases are all missing or dropped.
        counts = Counter(labels.values())
        raise_for_problems(
            [f"{source.source}: no case of class {name}" for name in source.class_names
             if counts[name] == 0],
            "a classifier needs cases of every class",
        )  # fmt: skip
        return _LabelledCases(labels, source.class_names)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._require_every_class_in_both_parts()
        super().setup(stage)

    def _require_every_class_in_both_parts(self) -> None:
        """Before training: a class absent from training cannot be learnt, and one absent from
        validation leaves the monitored metrics undefined."""
        labels, split = self._labelled.labels, self.split
        problems = [
            f"class {name} has no case among the {len(ids)} {part} cases"
            for part, ids in (("training", split.train), ("validation", split.val))
            for name in self.class_names
            if not any(labels[case_id] == name for case_id in ids)
        ]
        raise_for_problems(
            problems,
            f"the split (seed {self.seed}, "
            + (f"fold {self.fold} of {self.num_folds}" if self.fold is not None
               else f"val_fraction {self.val_fraction}")
            + ") leaves a class out; label more cases of it or change the split",
        )  # fmt: skip

    def _cases(self) -> list[BratsCase]:
        return [case for case in self.all_cases if case.case_id in self._labelled.labels]

    def _strata(self) -> dict[str, str]:
        return self._labelled.labels

    def _item(self, case: BratsCase) -> dict:
        return {
            IMAGE_KEY: [str(path) for path in case.images],
            LABEL_KEY: self.class_names.index(self._labelled.labels[case.case_id]),
            CASE_ID_KEY: case.case_id,
        }

    def _transforms(self, stage: Literal["train", "val", "predict"]) -> Compose:
        if stage == "train":
            return training_transforms(self.roi_size, self.spacing)
        return deterministic_transforms(self.roi_size, self.spacing)
