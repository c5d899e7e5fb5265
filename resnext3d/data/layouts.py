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

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from monai.data import load_decathlon_datalist

from resnext3d.data.errors import DataError, Problem, raise_for_problems
from resnext3d.data.releases import MODALITIES, RELEASES, Release

# The file names of each release with a file per modality.
_FILE_PATTERNS: dict[Release, re.Pattern[str]] = {
    name: re.compile(
        rf"(?P<case>.+){re.escape(release.separator)}"
        rf"(?P<suffix>{'|'.join((*release.channel_suffixes, release.label_suffix))})\.nii(\.gz)?"
    )
    for name, release in RELEASES.items()
    if release.channel_suffixes
}
GRADE_FOLDERS = ("HGG", "LGG")
# A release's few cases among another's are named by their first ids, enough to find them.
_EXAMPLE_CASES = 3


@dataclass(frozen=True)
class BratsCase:
    """One case: where its files are and what its folder says about it.

    Attributes:
        case_id: the case's name, e.g. ``BraTS2021_00012``, ``BraTS-GLI-00012-000``, ``BRATS_012``.
        images: the four modality files in ``MODALITIES`` order or, for the Decathlon, the one 4-D
            file whose channels are already in that order. A path may not exist yet: discovery
            follows the naming scheme and `check_files` reports missing files.
        label_map: the segmentation file, or None where the release ships none for the case.
        release: the naming and label-value convention, a key of
            :data:`resnext3d.data.releases.RELEASES`.
        grade: "HGG" or "LGG" where a 2018/19 grade folder holds the case, else None.
    """

    case_id: str
    images: tuple[Path, ...]
    label_map: Path | None
    release: Release
    grade: str | None = None


@dataclass(frozen=True)
class Discovery:
    """The cases found in a folder and every problem of its layout."""

    cases: list[BratsCase]
    problems: list[Problem]


def discover_cases(root: str | Path) -> list[BratsCase]:
    """Return the cases under `root`, sorted by id; raise one DataError naming every problem of
    the layout (see `find_cases`), or if there are no cases."""
    discovery = find_cases(root)
    raise_for_problems(discovery.problems, f"{root}: the data set's layout cannot be used")
    return discovery.cases


def find_cases(root: str | Path) -> Discovery:
    """The cases under `root`, sorted by id, and every problem of the layout that would otherwise
    drop or mix up cases unnoticed: folders that cannot be listed, symbolic links that cannot be
    followed or that lead to a folder containing them, two files for one modality of a case, a
    case in several folders and cases of different releases.

    Symbolic links to folders and files are followed, so that a data set may be assembled from
    links. Raise DataError if there is no such folder or no case in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if (root / "dataset.json").is_file():
        cases, problems = _decathlon_cases(root), []
    else:
        cases, problems = _brats_cases(root)
    if not cases:
        summary = (
            f"{root}: no BraTS cases found; expected <ID>/<ID>_flair.nii.gz (BraTS 2018-2021), "
            "<ID>/<ID>-t2f.nii.gz (BraTS 2023) or a Decathlon dataset.json"
        )
        raise_for_problems(problems, summary)
        raise DataError(summary)
    problems += _mixed_release_problems(cases)
    return Discovery(sorted(cases, key=lambda case: case.case_id), problems)


def _brats_cases(root: Path) -> tuple[list[BratsCase], list[Problem]]:
    paths, problems = _walk(root)
    files_by_case: dict[tuple[Path, str, Release], dict[str, list[Path]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for path in paths:
        for release, pattern in _FILE_PATTERNS.items():
            if match := pattern.fullmatch(path.name):
                files_by_case[(path.parent, match["case"], release)][match["suffix"]].append(path)
                break

    cases, folders_by_id = [], defaultdict(list)
    for (folder, case_id, release), files in files_by_case.items():
        folders_by_id[case_id].append(folder)
        problems += [
            Problem(
                str(folder),
                f"{len(duplicates)} files for {_role(release, suffix)}: "
                f"{', '.join(path.name for path in duplicates)}; a case needs exactly one",
                case_id,
            )
            for suffix, duplicates in files.items()
            if len(duplicates) > 1
        ]
        # Of duplicates, the first by name, so that the checks read a definite file.
        chosen = {suffix: duplicates[0] for suffix, duplicates in files.items()}
        cases.append(_brats_case(root, folder, case_id, release, chosen))
    problems += [
        Problem(
            str(folders[0]),
            f"case {case_id} is in several folders: {', '.join(map(str, folders))}",
            case_id,
        )
        for case_id, folders in folders_by_id.items()
        if len(folders) > 1
    ]
    return cases, problems


def _walk(root: Path) -> tuple[list[Path], list[Problem]]:
    """Every file under `root`, sorted, following symbolic links, and a problem for each folder
    that cannot be listed (its cases would be missing), each link that cannot be followed (a
    case folder or file moved or deleted) and each link to a folder that contains it (walking it
    would never end)."""
    paths, problems = [], []

    def unlistable(error: OSError) -> None:
        problems.append(Problem(str(error.filename), f"cannot list the folder ({error.strerror})"))

    # The real paths of each folder's ancestors (itself included), to recognise a link cycle.
    real_ancestors = {str(root): {os.path.realpath(root)}}
    for folder, subfolders, names in os.walk(root, onerror=unlistable, followlinks=True):
        ancestors = real_ancestors.pop(folder)
        for name in list(subfolders):
            path = os.path.join(folder, name)
            real_path = os.path.realpath(path)
            if real_path in ancestors:
                subfolders.remove(name)
                message = f"symbolic link cycle: it leads to {real_path}, a folder that contains it"
                problems.append(Problem(path, message))
            else:
                real_ancestors[path] = ancestors | {real_path}
        for name in names:
            if name.startswith("."):  # macOS "._*" resource forks that archives often contain
                continue
            path = Path(folder, name)
            try:
                path.stat()  # follows a link: only a broken link or a loop of links fails here
            except OSError as error:
                message = f"symbolic link to {os.readlink(path)} is broken ({error.strerror})"
                problems.append(Problem(str(path), message))
                continue
            paths.append(path)
    return sorted(paths), problems


def _role(release: Release, suffix: str) -> str:
    """The modality name (``MODALITIES``) of a file-name suffix, or "the label map"."""
    if suffix == RELEASES[release].label_suffix:
        return "the label map"
    return MODALITIES[RELEASES[release].channel_suffixes.index(suffix)]


def _mixed_release_problems(cases: list[BratsCase]) -> list[Problem]:
    """A problem for each release with fewer cases than the most common one: releases name their
    files and label the tumour differently, and a data set is read with one release's labels."""
    by_release: dict[Release, list[BratsCase]] = defaultdict(list)
    for case in sorted(cases, key=lambda case: case.case_id):
        by_release[case.release].append(case)
    ranked = sorted(by_release.items(), key=lambda entry: (-len(entry[1]), entry[0]))
    counts = ", ".join(f"{release} {len(members)}" for release, members in ranked)
    problems = []
    for release, minority in ranked[1:]:
        examples = ", ".join(case.case_id for case in minority[:_EXAMPLE_CASES])
        examples += ", ..." if len(minority) > _EXAMPLE_CASES else ""
        message = (
            f"cases of several releases ({counts}): the {release} cases ({examples}) name their "
            f"files and label values unlike the {ranked[0][0]} cases; keep one release per data "
            "folder"
        )
        problems.append(Problem(str(minority[0].images[0].parent), message))
    return problems


def _brats_case(
    root: Path, folder: Path, case_id: str, release: Release, files: dict[str, Path]
) -> BratsCase:
    # A missing modality gets the path the naming scheme expects, for the file checks to report.
    extension = ".nii.gz" if next(iter(files.values())).name.endswith(".gz") else ".nii"

    naming = RELEASES[release]

    def path_of(suffix: str) -> Path:
        return files.get(suffix, folder / f"{case_id}{naming.separator}{suffix}{extension}")

    grade_folders = [part for part in folder.relative_to(root).parts if part in GRADE_FOLDERS]
    return BratsCase(
        case_id=case_id,
        images=tuple(path_of(suffix) for suffix in naming.channel_suffixes),
        label_map=files.get(naming.label_suffix),
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
