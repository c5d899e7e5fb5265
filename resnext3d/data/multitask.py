"""The Lightning data module for grading BraTS tumours and segmenting their regions at once."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Mapping
from functools import cached_property
from typing import Literal, NamedTuple

import torch
from monai.transforms import Compose, MapTransform

from resnext3d.data.errors import raise_for_problems
from resnext3d.data.file_checks import LabelMapUse
from resnext3d.data.labels import check_labels
from resnext3d.data.layouts import BratsCase
from resnext3d.data.regions import ConvertToBratsRegionsd
from resnext3d.data.segmentation import BratsSegmentationData
from resnext3d.data.transforms import LABEL_KEY

log = logging.getLogger(__name__)

GRADE_KEY = "grade"
HAS_MASK_KEY = "has_mask"
# The grade of a case the label file does not name: ignored by the grade loss and metrics.
NO_GRADE = -1


class _Grades(NamedTuple):
    by_case: dict[str, str]  # the graded cases' labels, by case id
    names: tuple[str, ...]  # the classes in index order


class EmptyLabelMapd(MapTransform):
    """Zero the label map of an item whose case has none (``has_mask`` false), whose place its
    first image file held while loading, resampling and cropping: every case then goes through
    the same transforms, and a batch collates whatever labels its cases have."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        item = dict(data)
        if not item[HAS_MASK_KEY]:
            for key in self.key_iterator(item):
                item[key] = torch.zeros_like(item[key][:1])
        return item


class BratsMultitaskData(BratsSegmentationData):
    """BraTS cases with their grade and their label maps, for one network that does both.

    Batches are :class:`BratsSegmentationData`'s (``image``, ``label`` region masks, ``case_id``,
    ``release``; crops in training, whole volumes one at a time otherwise) plus ``grade``, the
    class index of each item's case (:data:`NO_GRADE`, -1, where the label file does not name the
    case), and ``has_mask``, false where the case has no label map (its ``label`` is all zero and
    trains nothing; its training crops are drawn anywhere in the head). A case may have either
    label or both; a case with neither trains nothing and is only predicted.

    Args:
        labels, label_column, id_column, classes: the grade labels, as
            :class:`BratsClassificationData` reads them (None: the data folder's
            name_mapping.csv, or the 2018/19 HGG/LGG folders); a case they do not name has no
            grade, where the classifier would stop.
        samples_per_case, **kwargs: as :class:`BratsSegmentationData`'s.
    """

    def __init__(
        self,
        labels: str | None = None,
        label_column: str | None = None,
        id_column: str | None = None,
        classes: list[str] | None = None,
        samples_per_case: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(samples_per_case=samples_per_case, **kwargs)
        self.save_hyperparameters()
        self.labels = labels
        self.label_column = label_column
        self.id_column = id_column
        self.classes = classes

    @property
    def grade_names(self) -> list[str]:
        """The grade classes in index order; for HGG/LGG, HGG is class 1 (the positive)."""
        return list(self._grades.names)

    @property
    def num_grades(self) -> int:
        return len(self.grade_names)

    @cached_property
    def _grades(self) -> _Grades:
        source, labels, problems = check_labels(
            self._data_root(),
            self.all_cases,
            self.labels,
            self.id_column,
            self.label_column,
            self.classes,
            drop_unlabelled=True,
        )
        raise_for_problems(problems, "the grade labels cannot be used")
        return _Grades(labels, source.class_names)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._require_every_grade_in_both_parts()
        super().setup(stage)
        kinds = Counter(
            ("graded" if case.case_id in self._grades.by_case else "ungraded")
            + (", segmented" if case.label_map is not None else ", without label map")
            for case in self.all_cases
        )
        log.info("cases: %s", "; ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))

    def _require_every_grade_in_both_parts(self) -> None:
        """Before training: a grade absent from the training cases cannot be learnt, and one
        absent from the validation cases leaves AUROC undefined."""
        graded, split = self._grades.by_case, self.split
        problems = [
            f"grade {name} has no case among the {len(ids)} {part} cases"
            for part, ids in (("training", split.train), ("validation", split.val))
            for name in self.grade_names
            if not any(graded.get(case_id) == name for case_id in ids)
        ]
        raise_for_problems(
            problems, f"the split (seed {self.seed}) leaves a grade out; grade more cases of it"
        )

    def _strata(self) -> dict[str, str]:
        # Grades and the presence of a label map in proportion in both parts.
        return {
            case.case_id: f"{self._grades.by_case.get(case.case_id)}/{case.label_map is not None}"
            for case in self.all_cases
        }

    def _label_map_use(self, stage: str) -> LabelMapUse:
        return "unused" if stage == "predict" else "if present"

    def _item(self, case: BratsCase) -> dict:
        item = super()._item(case)
        grade = self._grades.by_case.get(case.case_id)
        item[GRADE_KEY] = NO_GRADE if grade is None else self.grade_names.index(grade)
        item[HAS_MASK_KEY] = case.label_map is not None
        if case.label_map is None:
            item[LABEL_KEY] = str(case.images[0])  # a stand-in: EmptyLabelMapd zeroes it
        return item

    def _transforms(self, stage: Literal["train", "val", "predict"]) -> Compose:
        transforms = list(super()._transforms(stage).transforms)
        if stage != "predict":
            # Before the label map becomes region masks: a stand-in image has no label values.
            converting = next(
                i for i, t in enumerate(transforms) if isinstance(t, ConvertToBratsRegionsd)
            )
            transforms.insert(converting, EmptyLabelMapd(LABEL_KEY))
        return Compose(transforms)
