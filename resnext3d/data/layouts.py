"""Find the cases of a BraTS or Decathlon brain-tumour folder, whichever release's layout it has.

Supported layouts, detected from the files:

- BraTS 2018-2021: ``<ID>/<ID>_{flair,t1,t1ce,t2}.nii.gz`` (+ ``<ID>_seg.nii.gz``); 2018/19 group
  the case folders in ``HGG/`` and ``LGG/``, which give the tumour grade.
- BraTS 2023 (GLI and the other 2023 cohorts): ``<ID>/<ID>-{t2f,t1n,t1c,t2w}.nii.gz``
  (+ ``<ID>-seg.nii.gz``).
- Medical Segmentation Decathlon Task01_BrainTumour: ``dataset.json`` whose ``training`` list names
  one 4-D image per case (channels FLAIR, T1w, T1gd, T2w) and its label map.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from monai.data import load_decathlon_datalist

from resnext3d.data.errors import DataError, raise_for_problems

# The channel order of every image this package loads, whichever release the files come from.
MODALITIES = ("flair", "t1", "t1ce", "t2")

Release = Literal["brats2021", "brats2023", "decathlon"]

# Each release's file-name suffix of the MODALITIES, in that order, and its separator.
_MODALITY_SUFFIXES: dict[Release, tuple[str, ...]] = {
    "brats2021": ("flair", "t1", "t1ce", "t2"),
    "brats2023": ("t2f", "t1n", "t1c", "t2w"),
}
_SEPARATORS: dict[Release, str] = {"brats2021": "_", "brats2023": "-"}
_SEGMENTATION_SUFFIX = "seg"
_FILE_PATTERNS: dict[Release, re.Pattern[str]] = {
    release: re.compile(
        rf"(?P<case>.+){_SEPARATORS[release]}"
        rf"(?P<suffix>{'|'.join((*suffixes, _SEGMENTATION_SUFFIX))})\.nii(\.gz)?"
    )
    for release, suffixes in _MODALITY_SUFFIXES.items()
}
GRADE_FOLDERS = ("HGG", "LGG")


@dataclass(frozen=True)
class BratsCase:
    """One case: where its files are and what its folder says about it.

    Attributes:
        case_id: the case's name, e.g. ``BraTS2021_00012``, ``BraTS-GLI-00012-000``, ``BRATS_012``.
        images: the four modality files in ``MODALITIES`` order or, for the Decathlon, the one 4-D
            file whose channels are already in that order. A path may not exist yet: discovery
            follows the naming scheme and `validate_cases` reports missing files.
        label_map: the segmentation file, or None where the release ships none for the case.
        release: the naming and label-value convention. "brats2021" covers 2018-2021 (1 necrosis,
            2 edema, 4 enhancing), "brats2023" uses 3 for enhancing, and "decathlon" uses
            1 edema, 2 non-enhancing tumour, 3 enhancing.
        grade: "HGG" or "LGG" where a 2018/19 grade folder holds the case, else None.
    """

    case_id: str
    images: tuple[Path, ...]
    label_map: Path | None
    release: Release
    grade: str | None = None


def discover_cases(root: str | Path) -> list[BratsCase]:
    """Return the cases under `root`, sorted by id; raise DataError if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    cases = _decathlon_cases(root) if (root / "dataset.json").is_file() else _brats_cases(root)
    if not cases:
        raise DataError(
            f"{root}: no BraTS cases found; expected <ID>/<ID>_flair.nii.gz (BraTS 2018-2021), "
            "<ID>/<ID>-t2f.nii.gz (BraTS 2023) or a Decathlon dataset.json"
        )
    return sorted(cases, key=lambda case: case.case_id)


def _brats_cases(root: Path) -> list[BratsCase]:
    files_by_case: dict[tuple[Path, str, Release], dict[str, Path]] = defaultdict(dict)
    for path in sorted(root.rglob("*.nii*")):
        if path.name.startswith("."):  # macOS "._*" resource forks that archives often contain
            continue
        for release, pattern in _FILE_PATTERNS.items():
            if match := pattern.fullmatch(path.name):
                files_by_case[(path.parent, match["case"], release)][match["suffix"]] = path
                break

    cases, folders_by_id = [], defaultdict(list)
    for (folder, case_id, release), files in files_by_case.items():
        folders_by_id[case_id].append(folder)
        cases.append(_brats_case(root, folder, case_id, release, files))
    raise_for_problems(
        [
            f"case {case_id} is in several folders: {', '.join(map(str, folders))}"
            for case_id, folders in folders_by_id.items()
            if len(folders) > 1
        ],
        f"{root}: ambiguous BraTS cases",
    )
    return cases


def _brats_case(
    root: Path, folder: Path, case_id: str, release: Release, files: dict[str, Path]
) -> BratsCase:
    # A missing modality gets the path the naming scheme expects, for validation to report.
    extension = ".nii.gz" if next(iter(files.values())).name.endswith(".gz") else ".nii"

    def path_of(suffix: str) -> Path:
        return files.get(suffix, folder / f"{case_id}{_SEPARATORS[release]}{suffix}{extension}")

    grade_folders = [part for part in folder.relative_to(root).parts if part in GRADE_FOLDERS]
    return BratsCase(
        case_id=case_id,
        images=tuple(path_of(suffix) for suffix in _MODALITY_SUFFIXES[release]),
        label_map=files.get(_SEGMENTATION_SUFFIX),
        release=release,
        grade=grade_folders[-1] if grade_folders else None,
    )


def _decathlon_cases(root: Path) -> list[BratsCase]:
    # MONAI's reader rather than its DecathlonDataset, which insists on downloading.
    index_path = root / "dataset.json"
    try:
        return [
            BratsCase(
                case_id=_without_nifti_extension(Path(entry["image"]).name),
                images=(Path(entry["image"]),),
                label_map=Path(entry["label"]) if entry.get("label") else None,
                release="decathlon",
            )
            for entry in load_decathlon_datalist(index_path)
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{index_path}: cannot read its 'training' list ({error!r})") from error


def _without_nifti_extension(name: str) -> str:
    return name.removesuffix(".gz").removesuffix(".nii")
