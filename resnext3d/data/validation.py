"""Check every case's files before training, from the NIfTI headers only, so it stays cheap."""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

from resnext3d.data.errors import raise_for_problems
from resnext3d.data.layouts import MODALITIES, BratsCase

# World coordinates of co-registered files agree far better than this (mm).
_AFFINE_TOLERANCE_MM = 1e-3


def validate_cases(cases: Sequence[BratsCase]) -> None:
    """Raise one DataError naming every missing, unreadable or mismatched file of `cases`.

    Only headers are read: a truncated ``.nii.gz`` whose header survived passes here and is
    reported, by name, when its data is loaded (see `resnext3d.data.transforms.LoadModalitiesd`).
    """
    problems = [problem for case in cases for problem in _case_problems(case)]
    raise_for_problems(problems, "the BraTS data cannot be used")


def _case_problems(case: BratsCase) -> list[str]:
    files = [*case.images, *([case.label_map] if case.label_map else [])]
    problems, images = [], {}
    for path in files:
        if not path.is_file():
            problems.append(f"{path}: missing file (case {case.case_id})")
            continue
        try:
            images[path] = nib.load(path)  # parses the header; the voxels are read lazily
        # nibabel reports a corrupt file as ImageFileError, EOFError, zlib.error, OSError, ...
        except Exception as error:
            problems.append(f"{path}: unreadable NIfTI header ({error})")
    if problems:
        return problems

    if case.release == "decathlon" and images[case.images[0]].shape[3:] != (len(MODALITIES),):
        problems.append(
            f"{case.images[0]}: shape {images[case.images[0]].shape}, expected 4 channels last "
            f"({', '.join(MODALITIES)})"
        )
    reference_path, reference = files[0], images[files[0]]
    for path in files[1:]:
        if images[path].shape[:3] != reference.shape[:3]:
            problems.append(
                f"{path}: shape {images[path].shape[:3]} differs from "
                f"{reference.shape[:3]} of {reference_path.name}"
            )
        elif not np.allclose(images[path].affine, reference.affine, atol=_AFFINE_TOLERANCE_MM):
            problems.append(
                f"{path}: affine differs from that of {reference_path.name}; "
                "a case's files must be co-registered"
            )
    return problems
