"""BraTS data: releases, layouts, labels, checks, splits, transforms, phantoms, data modules."""

from resnext3d.data.anatomical import (
    anatomical_case,
    ensure_anatomical_phantom,
    generate_anatomical_phantom,
)
from resnext3d.data.classification import BratsClassificationData
from resnext3d.data.datamodule import BratsDataModule
from resnext3d.data.errors import DataError, Problem
from resnext3d.data.file_checks import check_files, check_files_or_raise
from resnext3d.data.labels import (
    GRADE_CLASSES,
    CaseLabels,
    assign_labels,
    check_labels,
    find_labels,
    grade_folder_labels,
    read_label_csv,
)
from resnext3d.data.layouts import BratsCase, discover_cases
from resnext3d.data.multitask import BratsMultitaskData
from resnext3d.data.phantom import (
    add_phantom_arguments,
    ensure_phantom,
    generate_phantom,
    phantom_main,
    run_phantom,
)
from resnext3d.data.regions import (
    REGIONS,
    ConvertBratsRegionsToLabelsd,
    ConvertToBratsRegionsd,
    labels_to_regions,
    regions_to_labels,
)
from resnext3d.data.releases import MODALITIES, RELEASES, DatasetRelease, Release, TumourLabels
from resnext3d.data.segmentation import BratsSegmentationData
from resnext3d.data.splits import Split, holdout_split, kfold_split, load_split, save_split
from resnext3d.data.transforms import (
    LoadModalitiesd,
    deterministic_transforms,
    random_transforms,
    training_transforms,
)

__all__ = [
    "GRADE_CLASSES",
    "MODALITIES",
    "REGIONS",
    "RELEASES",
    "ConvertBratsRegionsToLabelsd",
    "ConvertToBratsRegionsd",
    "BratsCase",
    "BratsClassificationData",
    "BratsDataModule",
    "BratsMultitaskData",
    "BratsSegmentationData",
    "CaseLabels",
    "DataError",
    "DatasetRelease",
    "LoadModalitiesd",
    "Problem",
    "Release",
    "Split",
    "TumourLabels",
    "add_phantom_arguments",
    "anatomical_case",
    "assign_labels",
    "check_files",
    "check_files_or_raise",
    "check_labels",
    "deterministic_transforms",
    "discover_cases",
    "ensure_anatomical_phantom",
    "ensure_phantom",
    "find_labels",
    "generate_anatomical_phantom",
    "generate_phantom",
    "grade_folder_labels",
    "holdout_split",
    "kfold_split",
    "labels_to_regions",
    "load_split",
    "phantom_main",
    "random_transforms",
    "read_label_csv",
    "regions_to_labels",
    "run_phantom",
    "save_split",
    "training_transforms",
]
