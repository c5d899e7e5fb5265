"""Checks of every file a task reads, reporting all problems at once, each with its file.

Two depths: the quick check, run before every fit, validate, test and predict, reads headers and
file sizes only (a ``.nii.gz`` whose gzip trailer disagrees with its header's size is read in full
to tell a truncated file from an odd but valid one); the full check (``resnext3d check-data``,
``--data.init_args.check full``) also reads every voxel, which finds NaN and infinite values,
all-zero volumes, damage inside a compressed stream and label values a release does not use.
Files are read in parallel threads: nibabel's gzip and NumPy release the GIL.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from resnext3d.data.errors import DataError, Problem, raise_for_problems
from resnext3d.data.layouts import BratsCase
from resnext3d.data.regions import check_label_values
from resnext3d.data.releases import MODALITIES, RELEASES

# World coordinates of co-registered files agree far better than this (mm).
_AFFINE_TOLERANCE_MM = 1e-3
# Plausible MRI voxel spacing per axis (mm). Clinical and research brain MRI ranges from about
# 0.3 mm (7 T, high-resolution in-plane) to 5-7 mm (thick 2-D slices), and BraTS is resampled to
# 1 mm; outside these bounds lies a header error: a factor of 10 or 0.1 (cm or 0.1 mm units) on a
# 1-2 mm scan, or a zero column in the affine. Read as is, a 10 mm voxel is resampled to 2 mm at
# 125 times the voxels, a 0.1 mm one to almost nothing.
_SPACING_RANGE_MM = (0.2, 8.0)
# Fewer voxels than this along an axis is one slice or a thin slab saved as 3-D (a localiser, a
# 2-D export), not a volume of a head: a brain spans at least 120 mm, 15 voxels even at the
# coarsest spacing accepted. Resampling would smear it into a plausible-looking volume.
_MIN_VOXELS_PER_AXIS = 8
LABEL_MAP_ROLE = "label map"
# Which label maps a check reads: segmentation needs every case's, classification reads none, and
# a check without a task reads those that exist.
LabelMapUse = Literal["required", "unused", "if present"]


@dataclass
class FileScan:
    """What one file's header (and, in a full check, its voxels) says.

    Attributes:
        path: the file.
        case: its case id.
        role: a modality name (``MODALITIES``), "image" for the Decathlon's 4-D file, or
            "label map".
        problems: what is wrong with the file alone.
        shape, affine: from the header; None where it could not be read.
        channel_ranges: per channel (one for a 3-D file), the (min, max) of the finite voxels, or
            None for a channel without any; full check only.
        label_values: the distinct values of a label map; full check only.
    """

    path: Path
    case: str
    role: str
    problems: list[Problem] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    channel_ranges: list[tuple[float, float] | None] | None = None
    label_values: list[float] | None = None

    def problem(self, message: str, severity: Literal["error", "warning"] = "error") -> None:
        self.problems.append(Problem(str(self.path), message, self.case, severity))


@dataclass
class FileCheck:
    """The outcome of a check: every problem, and every file's scan (for the summary)."""

    problems: list[Problem]
    scans: list[FileScan]


def check_files_or_raise(
    cases: Sequence[BratsCase],
    label_map_use: LabelMapUse = "if present",
    full: bool = False,
    workers: int | None = None,
) -> list[Problem]:
    """Raise one DataError naming every unusable file of `cases` (see `check_files`); return the
    warnings, e.g. of all-zero modalities, which do not stop training."""
    result = check_files(cases, label_map_use, full, workers, show_progress=full)
    raise_for_problems(result.problems, "the BraTS data cannot be used")
    return result.problems


def check_files(
    cases: Sequence[BratsCase],
    label_map_use: LabelMapUse = "if present",
    full: bool = False,
    workers: int | None = None,
    show_progress: bool = False,
) -> FileCheck:
    """Check the images (and the label maps `label_map_use` says) of `cases`.

    Each file alone: missing, zero bytes, unreadable header, truncated (from its size), 2-D or 4-D
    where 3-D is expected (the Decathlon's 4-D images need 4 channels last); in a full check also
    unreadable voxels, NaN or infinite voxels, an all-zero modality (warning) and label values
    that are not the release's. Each case: images whose shape, orientation, voxel size or affine
    differ from the case's other images (the odd one out is blamed), a label map on another grid
    than the images, and every modality all zero (full check).
    """
    files = [(case, role, path) for case in cases for role, path in _files(case, label_map_use)]
    problems = _missing_label_maps(cases, label_map_use)
    workers = workers or min(32, (os.cpu_count() or 1) + 4)

    def scan(entry: tuple[BratsCase, str, Path]) -> FileScan:
        case, role, path = entry
        return _scan_file(FileScan(path, case.case_id, role), case, full)

    with ThreadPoolExecutor(max(1, workers)) as pool, _progress(len(files), show_progress) as tick:
        scans = []
        for file_scan in pool.map(scan, files):
            scans.append(file_scan)
            tick()
    scans_by_case: dict[str, list[FileScan]] = {}
    for file_scan in scans:
        scans_by_case.setdefault(file_scan.case, []).append(file_scan)
    for case in cases:
        case_scans = scans_by_case.get(case.case_id, [])
        problems += [problem for file_scan in case_scans for problem in file_scan.problems]
        problems += _case_problems(case, case_scans, full)
    if label_map_use != "unused":
        severity = "error" if label_map_use == "required" else "warning"
        problems += _no_tumour_problems(scans, severity)
    return FileCheck(problems, scans)


def _no_tumour_problems(
    scans: list[FileScan], severity: Literal["error", "warning"]
) -> list[Problem]:
    """A problem if no readable label map has a tumour voxel: a segmenter would learn to predict
    background everywhere (one empty case is fine). Where the check has not read the label maps'
    values, they are read one by one up to the first with a tumour, usually the first."""
    label_maps = [scan for scan in scans if scan.role == LABEL_MAP_ROLE and not scan.problems]
    if not label_maps or any(_has_tumour(scan) for scan in label_maps):
        return []
    folder = os.path.commonpath([scan.path.parent for scan in label_maps])
    message = (
        f"no case has a tumour label: all {len(label_maps)} label maps are background (0) "
        "everywhere"
    )
    return [Problem(folder, message, severity=severity)]


def _has_tumour(scan: FileScan) -> bool:
    if scan.label_values is not None:
        return any(value != 0 for value in scan.label_values)
    try:
        return bool(np.asanyarray(nib.load(scan.path).dataobj).any())
    except Exception:  # damaged inside its stream: the full check names it; not a tumour here
        return False


def _missing_label_maps(cases: Sequence[BratsCase], label_map_use: LabelMapUse) -> list[Problem]:
    """An error per case without a label map where they are required; where they are merely
    read if present, a warning per case without one while others have one (a lost file)."""
    message, severity = "no label map (segmentation needs one)", "error"
    if label_map_use == "if present":
        if all(case.label_map is None for case in cases):
            return []
        message, severity = "no label map, unlike other cases", "warning"
    elif label_map_use == "unused":
        return []
    return [
        Problem(str(case.images[0].parent), message, case.case_id, severity)
        for case in cases
        if case.label_map is None
    ]


def _files(case: BratsCase, label_map_use: LabelMapUse) -> Iterator[tuple[str, Path]]:
    roles = MODALITIES if len(case.images) == len(MODALITIES) else ("image",)
    yield from zip(roles, case.images, strict=True)
    if case.label_map is not None and label_map_use != "unused":
        yield LABEL_MAP_ROLE, case.label_map


def _expected_ndim(case: BratsCase, role: str) -> int:
    release = RELEASES[case.release]
    return release.spatial_dims if role == LABEL_MAP_ROLE else release.image_ndim


def _scan_file(scan: FileScan, case: BratsCase, full: bool) -> FileScan:
    path = scan.path
    if not path.is_file():
        scan.problem("missing file")
        return scan
    size = path.stat().st_size
    if size == 0:
        scan.problem("empty file (0 bytes)")
        return scan
    try:
        image = nib.load(path)  # parses the header; the voxels are read lazily
    # nibabel reports a corrupt file as ImageFileError, EOFError, zlib.error, OSError, ...
    except Exception as error:
        scan.problem(f"unreadable NIfTI header ({error})")
        return scan
    dtype = image.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        name = image.header.get_value_label("datatype")
        described = name if name == str(dtype) else f"{name} ({dtype})"
        scan.problem(
            f"voxels of type {described} where real numbers (integers or floats) are expected"
        )
    expected_ndim = _expected_ndim(case, scan.role)
    shape = _volume_shape(tuple(image.shape), expected_ndim)
    if len(shape) != expected_ndim:
        scan.problem(
            f"{len(shape)}-D image of shape {shape} where a {expected_ndim}-D one is expected"
            + (f" (4 channels last: {', '.join(MODALITIES)})" if expected_ndim == 4 else "")
        )
    elif expected_ndim == 4 and shape[3] != len(MODALITIES):
        scan.problem(f"shape {shape}, expected 4 channels last ({', '.join(MODALITIES)})")
    elif min(shape[:3]) < _MIN_VOXELS_PER_AXIS:
        scan.problem(
            f"shape {shape} is not a volume: fewer than {_MIN_VOXELS_PER_AXIS} voxels along an axis"
        )
    # A geometry that cannot be trusted leaves the file out of the case's comparisons.
    if not np.isfinite(image.affine).all():
        scan.problem("NaN or infinite values in the affine (voxel-to-world matrix)")
        return scan
    scan.shape, scan.affine = shape, image.affine
    if message := _spacing_problem(path, image):
        scan.problem(message)

    if full:
        if not scan.problems:
            _scan_voxels(scan, image)
    # The size only hints at truncation (a multi-member gzip has another trailer): confirm it.
    elif _size_suggests_truncation(path, image, size) and (error := _read_error(image)):
        scan.problem(error)
    return scan


def _volume_shape(shape: tuple[int, ...], expected_ndim: int) -> tuple[int, ...]:
    """`shape` without the trailing singleton axis of a 3-D volume stored as (X, Y, Z, 1), as
    some converters write it; MONAI's loader makes that axis the channel."""
    if expected_ndim == 3 and len(shape) == 4 and shape[3] == 1:
        return shape[:3]
    return shape


def _spacing_problem(path: Path, image: nib.spatialimages.SpatialImage) -> str | None:
    """What is implausible about the voxel size the loader will use (the affine's), or about
    the header's voxel size (pixdim) where the affine is built from it."""
    header = image.header
    if isinstance(header, nib.Nifti1Header) and header["sform_code"] == 0:
        # nibabel, so MONAI, reads a zero pixdim as 1 mm and a negative one as its absolute value,
        # fixing the header it returns: the header as written says what the file holds.
        with nib.openers.ImageOpener(path) as file:
            pixdim = type(header).from_fileobj(file, check=False)["pixdim"][1:4]
        if (pixdim <= 0).any():
            return (
                f"voxel size (pixdim) {'x'.join(f'{v:g}' for v in pixdim)} in the header is zero "
                "or negative: the file's voxel size is unknown"
            )
    spacing = nib.affines.voxel_sizes(image.affine)
    low, high = _SPACING_RANGE_MM
    if ((spacing < low) | (spacing > high)).any():
        return (
            f"voxel size {_mm(spacing)} is implausible for MRI (each axis {low:g} to {high:g} mm "
            "expected): is the header's unit or scale wrong?"
        )
    return None


def _size_suggests_truncation(path: Path, image: nib.spatialimages.SpatialImage, size: int) -> bool:
    """Whether the file is shorter than its header promises; for a ``.nii.gz``, whether the
    uncompressed size in the gzip trailer differs from the header's."""
    try:
        proxy = image.dataobj
        expected = (
            int(proxy.offset)
            + int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize
        )
    except AttributeError:  # not an on-disk array proxy: nothing to compare
        return False
    if not path.name.endswith(".gz"):
        return size < expected
    # gzip's last 4 bytes hold the uncompressed size modulo 2**32.
    with path.open("rb") as file:
        file.seek(-4, os.SEEK_END)
        return int.from_bytes(file.read(4), "little") != expected % 2**32


def _read_error(image: nib.spatialimages.SpatialImage) -> str | None:
    try:
        np.asanyarray(image.dataobj)
    except Exception as error:  # EOFError, zlib.error, OSError, ValueError, ...
        return _unreadable_data(error)
    return None


def _unreadable_data(error: Exception) -> str:
    return f"truncated or damaged: cannot read the voxel data ({type(error).__name__}: {error})"


def _scan_voxels(scan: FileScan, image: nib.spatialimages.SpatialImage) -> None:
    try:
        data = np.asanyarray(image.dataobj).reshape(scan.shape)
    except Exception as error:  # EOFError, zlib.error, OSError, ValueError, ...
        scan.problem(_unreadable_data(error))
        return
    finite = None
    if np.issubdtype(data.dtype, np.inexact):
        finite = np.isfinite(data)
        nans, infinities = int(np.isnan(data).sum()), int((~finite).sum())
        infinities -= nans
        if nans:
            scan.problem(f"{nans} NaN voxel{'s' if nans > 1 else ''}")
        if infinities:
            scan.problem(f"{infinities} infinite voxel{'s' if infinities > 1 else ''}")
        if finite.all():
            finite = None
    if scan.role == LABEL_MAP_ROLE:
        scan.label_values = np.unique(data[finite] if finite is not None else data).tolist()
        return
    channels = [data] if data.ndim < 4 else [data[..., c] for c in range(data.shape[3])]
    scan.channel_ranges = []
    for index, channel in enumerate(channels):
        values = (
            channel if finite is None else channel[finite[..., index] if data.ndim == 4 else finite]
        )
        scan.channel_ranges.append(
            (float(values.min()), float(values.max())) if values.size else None
        )


def _case_problems(case: BratsCase, scans: list[FileScan], full: bool) -> list[Problem]:
    problems: list[Problem] = []
    gridded = [s for s in scans if s.shape is not None and len(s.shape) >= 3]
    gridded = [s for s in gridded if len(s.shape) == _expected_ndim(case, s.role)]
    images = [s for s in gridded if s.role != LABEL_MAP_ROLE]
    if not images:
        return problems
    reference_shape = Counter(s.shape[:3] for s in images).most_common(1)[0][0]
    on_grid = [s for s in images if s.shape[:3] == reference_shape]
    for scan in images:
        if scan.shape[:3] != reference_shape:
            others = ", ".join(s.role for s in on_grid)
            message = (
                f"shape {scan.shape[:3]} differs from {reference_shape} of the case's {others}"
            )
            problems.append(_problem(scan, message))
    reference = _majority_affine([s.affine for s in on_grid])
    for scan in on_grid:
        if not _same_affine(scan.affine, reference):
            others = ", ".join(s.role for s in on_grid if _same_affine(s.affine, reference))
            problems.append(_problem(scan, _affine_difference(scan.affine, reference, others)))

    for scan in (s for s in gridded if s.role == LABEL_MAP_ROLE):
        if scan.shape[:3] != reference_shape:
            message = f"label map shape {scan.shape[:3]} differs from the images' {reference_shape}"
            problems.append(_problem(scan, message))
        elif not _same_affine(scan.affine, reference):
            message = _affine_difference(scan.affine, reference, "images")
            problems.append(_problem(scan, f"label map on another grid: {message}"))
        if scan.label_values is not None:
            try:
                check_label_values(np.asarray(scan.label_values), case.release)
            except DataError as error:
                problems.append(_problem(scan, str(error)))

    if full:
        problems += _all_zero_problems(case, images)
    return problems


def _all_zero_problems(case: BratsCase, images: list[FileScan]) -> list[Problem]:
    """An error if every modality of the case is zero (nothing to learn from, nothing to crop
    to), else a warning per all-zero modality (a missing sequence that someone zero-filled)."""
    zero_channels = [
        (scan, name)
        for scan in images
        if scan.channel_ranges is not None
        for name, value_range in zip(
            MODALITIES if scan.role == "image" else (scan.role,), scan.channel_ranges, strict=True
        )
        if value_range is None or value_range == (0.0, 0.0)
    ]
    if len(zero_channels) == len(MODALITIES):
        return [Problem(str(case.images[0].parent), "every modality is all zero", case.case_id)]
    return [
        Problem(str(scan.path), f"all voxels are zero ({name})", case.case_id, "warning")
        for scan, name in zero_channels
    ]


def _problem(scan: FileScan, message: str) -> Problem:
    return Problem(str(scan.path), message, scan.case)


def _same_affine(affine: np.ndarray, reference: np.ndarray) -> bool:
    return bool(np.allclose(affine, reference, atol=_AFFINE_TOLERANCE_MM))


def _majority_affine(affines: list[np.ndarray]) -> np.ndarray:
    """The affine most files agree on (the first file's where as many agree on another)."""
    return max(affines, key=lambda a: sum(_same_affine(b, a) for b in affines))


def _affine_difference(affine: np.ndarray, reference: np.ndarray, others: str) -> str:
    orientation, expected_orientation = axis_codes(affine), axis_codes(reference)
    if orientation != expected_orientation:
        return (
            f"orientation {orientation} differs from {expected_orientation} of the case's {others}"
        )
    spacing, expected_spacing = nib.affines.voxel_sizes(affine), nib.affines.voxel_sizes(reference)
    if not np.allclose(spacing, expected_spacing, atol=_AFFINE_TOLERANCE_MM):
        return (
            f"voxel size {_mm(spacing)} differs from {_mm(expected_spacing)} of the case's {others}"
        )
    shift = float(np.abs(affine - reference).max())
    return (
        f"affine differs by up to {shift:.3g} mm from that of the case's {others}; a case's files "
        "must be co-registered"
    )


def axis_codes(affine: np.ndarray) -> str:
    """The directions the voxel axes point to, e.g. "LPS"; "?" for an axis of zero length."""
    return "".join(code or "?" for code in nib.aff2axcodes(affine))


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values) + " mm"


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (only where it is a terminal) and the function that advances it."""
    console = Console(stderr=True)
    if not show or not total or not console.is_terminal:
        yield lambda: None
        return
    columns = (TextColumn("checking files"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("check", total=total)
        yield lambda: progress.advance(task)
