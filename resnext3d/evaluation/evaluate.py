"""``resnext3d evaluate``: score a folder of predicted label maps against the reference label maps
as the BraTS challenge does (legacy and lesion-wise Dice and HD95 of TC, WT and ET), per case and
summarised.

Predictions are the ``.nii``/``.nii.gz`` files of one folder, named by case id, with or without
this project's ``_seg`` (or BraTS 2023's ``-seg``) suffix: ``predictions/<case_id>_seg.nii.gz``
of ``resnext3d predict`` as well as another tool's ``<case_id>.nii.gz``. References are a BraTS
or Decathlon data folder, whose label maps are found as training finds them, or a flat folder of
label maps named like the predictions.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np

from resnext3d.data.errors import DataError, Problem
from resnext3d.data.layouts import find_cases
from resnext3d.data.regions import REGIONS
from resnext3d.data.releases import RELEASES, Release
from resnext3d.evaluation.lesionwise import (
    GLIOMA_DILATION_ITERATIONS,
    MIN_LESION_MM3,
    WORST_HD95_MM,
    RegionScores,
    case_scores,
)
from resnext3d.files import describe_os_error

# The CSV's name of each RegionScores field, followed by the region: dice_tc, lesion_tp_et, ...
_COLUMN_NAMES = {
    "dice": "dice",
    "hd95": "hd95",
    "lesion_dice": "lesion_dice",
    "lesion_hd95": "lesion_hd95",
    "true_positives": "lesion_tp",
    "false_negatives": "lesion_fn",
    "false_positives": "lesion_fp",
}


def score_columns(regions: Sequence[str]) -> list[str]:
    """The CSV columns of the scores of `regions`: dice_tc, ..., lesion_fp_et."""
    return [
        f"{_COLUMN_NAMES[field.name]}_{region.lower()}"
        for region in regions
        for field in fields(RegionScores)
    ]


def score_row(case_id: str, scores: dict[str, RegionScores], **extra: object) -> dict[str, object]:
    """One case's CSV row: its id, `extra` columns, then each region's scores."""
    values = [value for region_scores in scores.values() for value in astuple(region_scores)]
    return {
        "case_id": case_id,
        **extra,
        **dict(zip(score_columns(scores), values, strict=True)),
    }


SCORE_COLUMNS = score_columns(REGIONS)
COLUMNS = ["case_id", "prediction", *SCORE_COLUMNS]
STATISTICS = ("mean", "std", "median")
# Affines written by different tools from one grid differ by float32 rounding, far below this.
AFFINE_TOLERANCE_MM = 1e-3
# The label-map suffixes of the releases that name files by suffix ("_seg", "-seg").
_SEGMENTATION_SUFFIXES = tuple(
    f"{release.separator}{release.label_suffix}"
    for release in RELEASES.values()
    if release.channel_suffixes
)


@dataclass(frozen=True)
class Reference:
    label_map: Path
    release: Release | None  # where the folder's layout says it: only the Decathlon's does


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Run ``resnext3d evaluate``; return 1 if any file is missing, extra or unusable, else 0."""
    args = _parser().parse_args(argv)
    try:
        predictions, problems = _label_maps_by_case(args.predictions)
        references, reference_problems = _reference_files(args.references)
    except DataError as error:
        print(f"resnext3d evaluate: error: {error}", file=sys.stderr)
        return 1
    problems += reference_problems + _pairing_problems(predictions, references, args)
    problems += [
        problem
        for case_id in sorted(predictions.keys() & references.keys())
        for problem in _grid_problems(predictions[case_id], references[case_id].label_map)
    ]
    rows = [] if problems else _score(predictions, references, args, problems)
    if problems:
        for problem in problems:
            print(f"resnext3d evaluate: error: {problem}", file=sys.stderr)
        return 1
    out = args.out or args.predictions / "scores.csv"
    summary_path = out.with_name(f"{out.stem}_summary.csv")
    summary = summarise(rows)
    try:
        write_csv(out, COLUMNS, rows)
        write_csv(summary_path, ["statistic", *SCORE_COLUMNS], summary)
    except OSError as error:
        path = error.filename or out
        print(
            f"resnext3d evaluate: error: {path}: {describe_os_error(error, path)}", file=sys.stderr
        )
        return 1
    print(_summary_table(summary))
    print(f"\n{len(rows)} cases: {out}, summary: {summary_path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnext3d evaluate",
        description="Score predicted label maps against the reference ones as the BraTS "
        "challenge does: per region (TC, WT, ET) the legacy Dice and HD95 of the whole region "
        "and the BraTS 2023 lesion-wise Dice and HD95 with the lesions found, missed and "
        "falsely predicted. Writes one CSV row per case and a summary (mean, sample standard "
        "deviation, median of each column). Exit status 1, before scoring, for a prediction "
        "without a reference, a reference without a prediction, or files on different grids.",
    )
    parser.add_argument(
        "predictions",
        type=Path,
        help="folder of label maps <case_id>.nii.gz or <case_id>_seg.nii.gz (resnext3d predict's)",
    )
    parser.add_argument(
        "references",
        type=Path,
        help="a BraTS or Decathlon data folder with label maps, or a folder of label maps named "
        "like the predictions",
    )
    parser.add_argument(
        "--release",
        choices=("auto", *RELEASES),
        default="auto",
        help="whose label values both use (default: the Decathlon's for a Decathlon folder, "
        "else each case's enhancing label: BraTS 2021's 4 or BraTS 2023's 3 in the reference, or "
        "in the prediction where the reference has no enhancing tumour; the regions of a case "
        "with none are the same in both)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the per-case CSV (default PREDICTIONS/scores.csv); the summary goes beside it, "
        "<name>_summary.csv",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score a reference without a prediction as the worst case rather than leave it out "
        "of the means, which would flatter predictions that skip hard cases: Dice 0 and HD95 "
        "374 mm for every region and metric, its lesions counted as missed",
    )
    parser.add_argument(
        "--dilation-iterations",
        type=int,
        default=GLIOMA_DILATION_ITERATIONS,
        help="dilations that merge nearby lesions (default %(default)s, the gliomas'; the "
        "organisers use 1 for meningiomas and metastases)",
    )
    parser.add_argument(
        "--min-lesion-mm3",
        type=float,
        default=MIN_LESION_MM3,
        help="reference lesions of this volume or less are left out (default %(default)s)",
    )
    return parser


def _label_maps_by_case(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if _is_label_map(path):
            files.setdefault(_case_id(path), []).append(path)
    if not files:
        raise DataError(f"{folder}: no label maps (.nii or .nii.gz files named by case id)")
    problems = [
        Problem(
            str(paths[0]),
            f"{len(paths)} files for case {case_id}: "
            f"{', '.join(path.name for path in paths)}; keep one",
        )
        for case_id, paths in files.items()
        if len(paths) > 1
    ]
    return {case_id: paths[0] for case_id, paths in files.items()}, problems


def _reference_files(folder: Path) -> tuple[dict[str, Reference], list[Problem]]:
    """The label map of each case of a data folder (found as training finds it) or, where the
    folder holds no BraTS or Decathlon case, of a flat folder of label maps."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    try:
        discovery = find_cases(folder)
    except DataError:
        flat, problems = _label_maps_by_case(folder)
        return {case_id: Reference(path, None) for case_id, path in flat.items()}, problems
    references = {
        case.case_id: Reference(
            case.label_map, "decathlon" if case.release == "decathlon" else None
        )
        for case in discovery.cases
        if case.label_map is not None
    }
    if not references:
        raise DataError(f"{folder}: its {len(discovery.cases)} cases have no label maps")
    return references, list(discovery.problems)


def _is_label_map(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.name.endswith((".nii", ".nii.gz"))
    )


def _case_id(path: Path) -> str:
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    for suffix in _SEGMENTATION_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _pairing_problems(
    predictions: dict[str, Path], references: dict[str, Reference], args: argparse.Namespace
) -> list[Problem]:
    problems = [
        Problem(
            str(predictions[case_id]),
            f"no reference label map for case {case_id} in {args.references}",
        )
        for case_id in sorted(predictions.keys() - references.keys())
    ]
    if not args.allow_missing:
        problems += [
            Problem(
                str(references[case_id].label_map),
                f"no prediction for case {case_id} in "
                f"{args.predictions} (--allow-missing scores it as the worst case)",
            )
            for case_id in sorted(references.keys() - predictions.keys())
        ]
    return problems


def _grid_problems(prediction: Path, reference: Path) -> list[Problem]:
    """A problem where either file cannot be read or the two lie on different voxel grids."""
    images = []
    for path in (prediction, reference):
        try:
            images.append(nib.load(path))  # the header only: the voxels are read when scoring
        except Exception as error:  # nibabel raises many kinds for a damaged or foreign file
            return [Problem(str(path), f"cannot read ({error})")]
    predicted, expected = images
    if _spatial_shape(predicted) != _spatial_shape(expected):
        message = (
            f"shape {predicted.shape} differs from the reference {reference}'s {expected.shape}"
        )
        return [Problem(str(prediction), message)]
    difference = np.abs(predicted.affine - expected.affine).max()
    if difference > AFFINE_TOLERANCE_MM:
        message = (
            f"affine differs from the reference {reference}'s by up to {difference:.4g} (voxel "
            "size or position); resample the prediction onto the reference's grid"
        )
        return [Problem(str(prediction), message)]
    return []


def _spatial_shape(image: nib.Nifti1Image) -> tuple[int, ...]:
    """The shape without trailing axes of length 1, which some tools write after the third."""
    shape = list(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def _score(
    predictions: dict[str, Path],
    references: dict[str, Reference],
    args: argparse.Namespace,
    problems: list[Problem | str],
) -> list[dict[str, object]]:
    """One CSV row per reference case; unreadable files and label values that are not the
    release's go to `problems`, each naming its file."""
    rows = []
    for case_id, reference in sorted(references.items()):
        prediction = predictions.get(case_id)
        try:
            expected, spacing = read_label_map(reference.label_map)
            predicted = (
                np.zeros_like(expected) if prediction is None else read_label_map(prediction)[0]
            )
            scores = case_scores(
                predicted,
                expected,
                _release(args.release, reference, predicted, expected),
                spacing,
                dilation_iterations=args.dilation_iterations,
                min_lesion_mm3=args.min_lesion_mm3,
                prediction_file=str(prediction) if prediction else None,
                reference_file=str(reference.label_map),
            )
        except DataError as error:
            problems.append(str(error))
            continue
        if prediction is None:
            scores = {region: _worst(region_scores) for region, region_scores in scores.items()}
        name = prediction.name if prediction else "missing"
        rows.append(score_row(case_id, scores, prediction=name))
    return rows


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The voxels and the spacing (mm) of a label map; DataError naming it if it cannot be read."""
    try:
        image = nib.load(path)
        return np.asanyarray(image.dataobj).reshape(
            _spatial_shape(image)
        ), image.header.get_zooms()[:3]
    except Exception as error:  # a truncated or damaged file: nibabel's, gzip's, zlib's errors
        raise DataError(f"{path}: cannot read ({error})") from error


def _release(
    requested: str, reference: Reference, predicted: np.ndarray, expected: np.ndarray
) -> Release:
    if requested != "auto":
        return requested
    if reference.release is not None:
        return reference.release
    # The reference's enhancing label decides, else the prediction's: a case without enhancing
    # tumour (most low grades) has the same regions in both releases.
    for label_map in (expected, predicted):
        for release in ("brats2021", "brats2023"):
            if (label_map == RELEASES[release].labels.enhancing).any():
                return release
    return "brats2023"


def _worst(scores: RegionScores) -> RegionScores:
    """The scores of a case without a prediction: the worst there are, every lesion missed."""
    return RegionScores(
        dice=0.0,
        hd95=WORST_HD95_MM,
        lesion_dice=0.0,
        lesion_hd95=WORST_HD95_MM,
        true_positives=0,
        false_negatives=scores.false_negatives,
        false_positives=0,
    )


def summarise(
    rows: Sequence[dict[str, object]], columns: Sequence[str] = SCORE_COLUMNS
) -> list[dict[str, object]]:
    """Mean, sample standard deviation (NaN for one case) and median of each score column."""
    summary = []
    for statistic in STATISTICS:
        row: dict[str, object] = {"statistic": statistic}
        for column in columns:
            values = np.array([case[column] for case in rows], dtype=float)
            if statistic == "mean":
                row[column] = float(values.mean())
            elif statistic == "std":
                row[column] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            else:
                row[column] = float(np.median(values))
        summary.append(row)
    return summary


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _summary_table(summary: Sequence[dict[str, object]]) -> str:
    lines = [f"{'':<16}" + "".join(f"{row['statistic']:>10}" for row in summary)]
    lines += [
        f"{column:<16}" + "".join(f"{row[column]:>10.4f}" for row in summary)
        for column in SCORE_COLUMNS
    ]
    return "\n".join(lines)
