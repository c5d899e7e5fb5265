"""A synthetic data set in the BraTS 2021 layout: head phantoms with a high- or low-grade tumour.

Real BraTS data needs a registration to download, so tests, demos and the default experiment train
on this phantom instead. Each case is a head-like ellipsoid (skull rim, CSF, folded grey/white
matter, ventricles) with a lumpy tumour somewhere in the brain, imaged in the four BraTS modalities
with their typical tissue contrasts, a smooth multiplicative bias field and Rician noise:

- high grade (HGG): a necrotic core (label 1) inside a rim that enhances on T1ce (label 4), in
  edema (label 2) that is bright on FLAIR and T2;
- low grade (LGG): a non-enhancing core (label 1) in edema, no label 4.

Grades alternate, so the classes are balanced, and case ``i`` depends only on ``(seed, i)``.

The "standard" difficulty separates the grades by a clear enhancing rim, which a classifier learns
in a few epochs (validation AUROC 1.00). The "hard" one makes the grades differ subtly and overlap,
as real gliomas do, so that architectures can be told apart on it: smaller tumours, stronger noise
and bias, high grades whose rim enhances weakly or on one side only and whose necrotic core may be
missing, and low grades with a faint enhancing patch or a cyst.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from resnext3d.data.errors import DataError
from resnext3d.data.labels import NAME_MAPPING_FILE
from resnext3d.data.releases import MODALITIES, RELEASES

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (80, 80, 64)
DEFAULT_SPACING = (2.4, 2.4, 2.5)
CASE_PREFIX = "BraTS2021_"
# Written last, so a folder without it (or with other parameters) is generated again.
COMPLETION_MARKER = ".phantom-complete.json"
Difficulty = Literal["standard", "hard"]
DIFFICULTIES: tuple[str, ...] = ("standard", "hard")

# Tissue classes, the row indices of TISSUE_CONTRAST and TISSUE_LABEL.
BACKGROUND, SKULL, CSF, GREY, WHITE, EDEMA, NECROSIS, ENHANCING, NON_ENHANCING = range(9)
# Relative signal of each tissue, columns in MODALITIES order, after the usual clinical contrasts.
TISSUE_CONTRAST = np.array(
    [
        # flair, t1, t1ce, t2
        [0.00, 0.00, 0.00, 0.00],  # background: exactly 0, as in skull-stripped BraTS
        [0.50, 0.90, 0.90, 0.60],  # skull rim: marrow and scalp fat, bright on T1
        [0.10, 0.20, 0.20, 1.00],  # CSF: suppressed on FLAIR, dark on T1, bright on T2
        [0.62, 0.60, 0.62, 0.62],  # grey matter
        [0.45, 0.85, 0.85, 0.42],  # white matter: brighter than grey on T1, darker on T2
        [1.00, 0.50, 0.50, 0.85],  # edema: bright on FLAIR and T2
        [0.45, 0.30, 0.32, 0.95],  # necrosis: fluid-like
        [0.75, 0.55, 1.40, 0.70],  # enhancing tumour: bright on T1ce only
        [0.85, 0.45, 0.47, 0.90],  # non-enhancing tumour core: bright on FLAIR/T2, not on T1ce
    ],
    dtype=np.float32,
)
# The brain (CSF, grey and white matter) fills the head ellipsoid up to this fraction of its radius.
BRAIN_RADIUS = 0.90
# The phantom is a BraTS 2018-2021 data set: its file names and label values.
RELEASE = RELEASES["brats2021"]
# The label of each tissue class.
_LABELS = RELEASE.labels
TISSUE_LABEL = np.array(
    [0, 0, 0, 0, 0, _LABELS.edema, _LABELS.core, _LABELS.enhancing, _LABELS.core], dtype=np.uint8
)


def generate_phantom(
    out_dir: str | Path,
    cases: int = 100,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    difficulty: Difficulty = "standard",
) -> Path:
    """Write `cases` phantom cases, their ``name_mapping.csv`` and the completion marker.

    Args:
        out_dir: the folder to fill; created if needed.
        cases: the number of cases; even indices are HGG, odd ones LGG.
        seed: the same seed gives byte-identical volumes.
        shape: voxels per axis.
        spacing: voxel size in mm per axis.
        difficulty: "standard" (the grades differ clearly) or "hard" (subtly, overlapping); see
            the module's description.

    Returns:
        `out_dir`.
    """
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    _check_difficulty(difficulty)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / COMPLETION_MARKER).unlink(missing_ok=True)
    affine = phantom_affine(shape, spacing)
    grades = [case_grade(index) for index in range(cases)]
    for index, grade in enumerate(grades):
        rng = np.random.default_rng([seed, index])
        # The hard cases' extra draws come from a stream of their own, so that the standard
        # cases stay what they were before there was a hard one.
        hard_rng = np.random.default_rng([seed, index, 1]) if difficulty == "hard" else None
        images, label_map = _phantom_case(rng, grade, tuple(shape), tuple(spacing), hard_rng)
        case_id = f"{CASE_PREFIX}{index:05d}"
        case_dir = out_dir / case_id
        case_dir.mkdir(exist_ok=True)
        for suffix, image in zip(RELEASE.channel_suffixes, images, strict=True):
            save_nifti(image, affine, case_dir / f"{case_id}{RELEASE.separator}{suffix}.nii.gz")
        label_file = f"{case_id}{RELEASE.separator}{RELEASE.label_suffix}.nii.gz"
        save_nifti(label_map, affine, case_dir / label_file)

    # The BraTS 2020 grade file; the real one has more id columns, which nothing here reads.
    with (out_dir / NAME_MAPPING_FILE).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["Grade", "BraTS_2020_subject_ID"])
        writer.writerows([grade, f"{CASE_PREFIX}{index:05d}"] for index, grade in enumerate(grades))
    parameters = _parameters(cases, seed, shape, spacing, difficulty)
    (out_dir / COMPLETION_MARKER).write_text(json.dumps(parameters) + "\n")
    return out_dir


def ensure_phantom(
    out_dir: str | Path,
    cases: int = 100,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    difficulty: Difficulty = "standard",
) -> Path:
    """Generate the phantom in `out_dir` unless a complete one with these parameters is there
    (see :func:`generate_into_place`)."""
    _check_difficulty(difficulty)
    parameters = _parameters(cases, seed, shape, spacing, difficulty)
    return generate_into_place(
        Path(out_dir),
        parameters,
        lambda staging: generate_phantom(staging, cases, seed, shape, spacing, difficulty),
    )


def generate_into_place(
    out_dir: Path, parameters: dict, generate: Callable[[Path], object]
) -> Path:
    """Unless `out_dir` holds a complete phantom of `parameters`, `generate` one into a sibling
    folder and rename it into place: an interrupted run leaves no half phantom behind, and
    concurrent callers (e.g. several ranks) do not write into each other's files. A phantom of
    other parameters, of either kind, is replaced; any other non-empty folder raises DataError."""
    existing = completed_parameters(out_dir)
    if existing == parameters:
        return out_dir
    if existing is None and out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir}: not a phantom folder and not empty; remove it or choose another"
        )
    log.info("Generating %d BraTS phantom cases in %s", parameters["cases"], out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    try:
        generate(staging)
        if out_dir.exists() and completed_parameters(out_dir) != parameters:
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except OSError:
        if completed_parameters(out_dir) != parameters:
            raise
        # Another process completed the same phantom first; keep theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The voxel-to-world (RAS) affine: BraTS-like LPS voxel axes, centred near an offset origin."""
    shape, spacing = np.asarray(shape), np.asarray(spacing, dtype=float)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    centre_offset = spacing * (shape - 1) / 2 * np.array([1, 1, -1])
    affine[:3, 3] = centre_offset + np.array([0.0, 20.0, -10.0])
    return affine


def add_phantom_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``resnext3d phantom`` to `parser`."""
    parser.add_argument("out_dir", type=Path, help="the folder to write the phantom to")
    parser.add_argument("--cases", type=int, default=100, help="number of cases (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=DEFAULT_SHAPE,
        help="voxels per axis (default 80 80 64)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=DEFAULT_SPACING,
        help="voxel size in mm (default 2.4 2.4 2.5)",
    )
    parser.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="standard",
        help="standard: the grades differ clearly; hard: subtly and overlapping (default standard)",
    )


def run_phantom(args: argparse.Namespace) -> int:
    """Generate the phantom that `args` (from `add_phantom_arguments`) describe; return 0."""
    out_dir = ensure_phantom(
        args.out_dir, args.cases, args.seed, args.shape, args.spacing, args.difficulty
    )
    print(f"{args.cases} BraTS phantom cases ({args.difficulty}, seed {args.seed}) in {out_dir}")
    return 0


def phantom_main(argv: Sequence[str] | None = None) -> int:
    """``resnext3d phantom OUT [--cases N] [--seed S] [--realism anatomical ...]``: generate a
    BraTS phantom data set, the simple one (the default) or the anatomical one
    (`resnext3d.data.anatomical`)."""
    from resnext3d.data import anatomical  # here: it imports this module

    parser = argparse.ArgumentParser(
        prog="resnext3d phantom", description="Generate a synthetic data set in the BraTS layout."
    )
    add_phantom_arguments(parser)
    parser.add_argument(
        "--realism",
        choices=("simple", "anatomical"),
        default="simple",
        help="simple: ellipsoid heads; anatomical: real brain anatomy (MNI template, needs the "
        "'anatomy' extra) with gliomas grown along white matter (default simple)",
    )
    parser.add_argument(
        "--release",
        choices=anatomical.RELEASES,
        default="brats2021",
        help="anatomical: the layout and label values to write (default brats2021)",
    )
    parser.add_argument(
        "--slice-thickness",
        type=float,
        default=None,
        help="anatomical: acquire FLAIR, T1 and T2 as axial slices this thick (mm), then "
        "interpolate them to the output grid (default: 3-D acquisitions)",
    )
    # The defaults of --shape and --spacing depend on the kind of phantom.
    parser.set_defaults(shape=None, spacing=None)
    options = parser._option_string_actions
    options["--shape"].help = (
        f"voxels per axis (default {' '.join(map(str, DEFAULT_SHAPE))}; anatomical: BraTS's "
        "240 x 240 x 155 mm field of view at the spacing)"
    )
    options["--spacing"].help = (
        f"voxel size in mm (default {' '.join(map(str, DEFAULT_SPACING))}; anatomical: "
        f"{' '.join(map(str, anatomical.DEFAULT_SPACING))}, e.g. 1 1 1 as BraTS)"
    )
    args = parser.parse_args(argv)
    if args.realism == "simple":
        if args.release != "brats2021" or args.slice_thickness is not None:
            parser.error("--release and --slice-thickness need --realism anatomical")
        args.shape = args.shape or DEFAULT_SHAPE
        args.spacing = args.spacing or DEFAULT_SPACING
        return run_phantom(args)
    if args.difficulty != "standard":
        parser.error("--difficulty is for the simple phantom; the anatomical one has its own")
    try:
        out_dir = anatomical.ensure_anatomical_phantom(
            args.out_dir,
            args.cases,
            args.seed,
            args.release,
            args.spacing or anatomical.DEFAULT_SPACING,
            args.shape,
            args.slice_thickness,
        )
    except (ImportError, ValueError, DataError) as error:
        print(f"resnext3d phantom: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.cases} anatomical BraTS phantom cases ({args.release}, seed {args.seed}) "
        f"in {out_dir}"
    )
    return 0


def case_grade(index: int) -> str:
    """Grades alternate, so that the classes are balanced."""
    return "HGG" if index % 2 == 0 else "LGG"


def _check_difficulty(difficulty: str) -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")


def _parameters(
    cases: int, seed: int, shape: Sequence[int], spacing: Sequence[float], difficulty: str
) -> dict:
    return {
        "cases": int(cases),
        "seed": int(seed),
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "difficulty": difficulty,
    }


def completed_parameters(out_dir: Path) -> dict | None:
    """The parameters a complete phantom in `out_dir` was generated with; None if there is none."""
    try:
        return json.loads((out_dir / COMPLETION_MARKER).read_text())
    except (OSError, ValueError):
        return None


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """`volume` as NIfTI with `affine`, its units millimetres, as scanners write them."""
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _phantom_case(
    rng: np.random.Generator,
    grade: str,
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    hard_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The four int16 modality volumes (MODALITIES order) and the uint8 label map of one case;
    a hard case where `hard_rng` is given."""
    # Voxel centres in mm from the volume centre; sparse, so that arithmetic broadcasts to 3-D.
    grid = np.meshgrid(
        *[
            ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
            for n, s in zip(shape, spacing, strict=True)
        ],
        indexing="ij",
        sparse=True,
    )
    field_of_view = np.multiply(shape, spacing)
    tissue, brain_axes = _anatomy(rng, grid, field_of_view)
    hard = hard_rng is not None
    enhancement = _add_tumour(rng, grid, tissue, brain_axes, grade, hard_rng)

    contrast = np.moveaxis(TISSUE_CONTRAST[tissue], -1, 0)
    if hard:
        # The enhancing rim takes the non-enhancing core's T1ce signal where it is weak or absent,
        # and a low grade's core gains some where it has a faint patch.
        t1ce = MODALITIES.index("t1ce")
        base = TISSUE_CONTRAST[NON_ENHANCING, t1ce]
        tumour = np.isin(tissue, (ENHANCING, NON_ENHANCING))
        gain = TISSUE_CONTRAST[ENHANCING, t1ce] - base
        contrast[t1ce][tumour] = base + gain * enhancement[tumour]
    # Smoothing the piecewise-constant contrast mimics partial volume at tissue borders.
    signal = ndimage.gaussian_filter(contrast, sigma=(0, 0.6, 0.6, 0.6))
    signal *= _bias_fields(rng, grid, field_of_view, scale=0.16 if hard else 0.08)
    scanner_gain = rng.uniform(150, 250, size=(len(MODALITIES), 1, 1, 1)).astype(np.float32)
    signal *= scanner_gain
    # Rician noise: the magnitude of a complex signal with Gaussian noise in both parts.
    noise_sigma = np.float32(14.0 if hard else 5.0)
    real, imaginary = rng.standard_normal((2, *signal.shape), dtype=np.float32) * noise_sigma
    signal = np.hypot(signal + real, imaginary) * (tissue != BACKGROUND)
    images = np.rint(signal).clip(0, np.iinfo(np.int16).max).astype(np.int16)
    return images, TISSUE_LABEL[tissue]


def _anatomy(
    rng: np.random.Generator, grid: list[np.ndarray], field_of_view: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes of a head without tumour, and the semi-axes of its brain (mm)."""
    # Semi-axes left-right, anterior-posterior, inferior-superior; a head is longest front to back.
    head_axes = field_of_view * np.array([0.40, 0.46, 0.42]) * rng.uniform(0.92, 1.04, 3)
    head_radius = _ellipsoid_radius(grid, np.zeros(3), head_axes)
    tissue = np.full(head_radius.shape, BACKGROUND, dtype=np.uint8)
    tissue[head_radius < 1.0] = SKULL
    tissue[head_radius < BRAIN_RADIUS] = CSF
    tissue[head_radius < 0.86] = GREY
    # White matter inside the cortex, its border folded like gyri about 4 cm apart.
    phases = rng.uniform(0, 2 * np.pi, 3)
    wave_x, wave_y, wave_z = (
        np.sin(axis / 6.0 + phase) for axis, phase in zip(grid, phases, strict=True)
    )
    tissue[head_radius < 0.68 + 0.08 * wave_x * wave_y * wave_z] = WHITE
    # The lateral ventricles: two elongated CSF blobs either side of the midline.
    for side in (-1, 1):
        centre = head_axes * np.array([side * 0.11, -0.05, 0.12])
        ventricle = _ellipsoid_radius(grid, centre, head_axes * np.array([0.07, 0.28, 0.12]))
        tissue[ventricle < 1.0] = CSF
    return tissue, head_axes * BRAIN_RADIUS


def _add_tumour(
    rng: np.random.Generator,
    grid: list[np.ndarray],
    tissue: np.ndarray,
    brain_axes: np.ndarray,
    grade: str,
    hard_rng: np.random.Generator | None = None,
) -> np.ndarray | None:
    """Draw a tumour of `grade` into the brain of `tissue`, in place.

    A hard tumour (`hard_rng` given) is smaller (0.7 of the radius) and returns the strength of
    its T1ce enhancement per voxel, 0 (none) to 1 (the standard rim's): a high grade's rim
    enhances weakly or on one side only and may lack its necrotic core; a low grade may have a
    faint enhancing patch or a fluid-filled cyst (labelled as necrosis, 1). A standard tumour
    returns None.
    """
    brain = np.isin(tissue, (CSF, GREY, WHITE))
    # The centre lies in the inner half of the brain, so the tumour rarely touches the skull.
    direction = rng.normal(size=3)
    centre = brain_axes * 0.5 * rng.uniform() ** (1 / 3) * direction / np.linalg.norm(direction)
    size = rng.uniform(0.18, 0.30)
    core_radius = brain_axes.mean() * (size * 0.7 if hard_rng is not None else size)
    core = _lumpy_distance(rng, grid, centre, core_radius)
    edema = _lumpy_distance(rng, grid, centre, core_radius * rng.uniform(1.4, 2.0))
    necrosis_radius = rng.uniform(0.45, 0.7) if grade == "HGG" else None

    tissue[(edema < 1) & brain] = EDEMA
    core_voxels = (core < 1) & brain
    if hard_rng is None:
        if grade == "HGG":
            tissue[core_voxels] = ENHANCING
            tissue[(core < necrosis_radius) & brain] = NECROSIS
        else:
            tissue[core_voxels] = NON_ENHANCING
        return None

    # Which side of the tumour enhances, for partial enhancement: a random half-space.
    normal = hard_rng.normal(size=3)
    side = sum(n * (axis - c) for n, axis, c in zip(normal, grid, centre, strict=True)) > 0
    enhancement = np.zeros(tissue.shape, dtype=np.float32)
    if grade == "HGG":
        tissue[core_voxels] = ENHANCING
        strength = hard_rng.uniform(0.15, 1.0)
        partial = hard_rng.uniform() < 0.4
        enhancement[core_voxels & (side if partial else True)] = strength
        if hard_rng.uniform() < 0.5:
            tissue[(core < necrosis_radius) & brain] = NECROSIS
    else:
        tissue[core_voxels] = NON_ENHANCING
        if hard_rng.uniform() < 0.35:
            enhancement[core_voxels & side] = hard_rng.uniform(0.1, 0.35)
        if hard_rng.uniform() < 0.3:
            tissue[(core < hard_rng.uniform(0.3, 0.6)) & brain] = NECROSIS
    return enhancement


def _ellipsoid_radius(
    grid: list[np.ndarray], centre: np.ndarray, semi_axes: np.ndarray
) -> np.ndarray:
    """The ellipsoidal radius of every voxel: below 1 inside the ellipsoid."""
    return np.sqrt(
        sum(((axis - c) / a) ** 2 for axis, c, a in zip(grid, centre, semi_axes, strict=True))
    )


def _lumpy_distance(
    rng: np.random.Generator, grid: list[np.ndarray], centre: np.ndarray, radius: float
) -> np.ndarray:
    """Distance from `centre` relative to an irregular outline of mean `radius`: below 1 inside.

    The outline is a randomly stretched ellipsoid whose radius varies smoothly with direction.
    """
    offsets = [
        (axis - c) / s for axis, c, s in zip(grid, centre, rng.uniform(0.75, 1.25, 3), strict=True)
    ]
    distance = np.sqrt(sum(offset**2 for offset in offsets)) + 1e-6
    directions = [offset / distance for offset in offsets]
    wave_vectors = rng.normal(scale=2.5, size=(3, 3))
    amplitudes, phases = rng.uniform(0.05, 0.15, 3), rng.uniform(0, 2 * np.pi, 3)
    lumps = 1 + sum(
        amplitude * np.sin(sum(k * u for k, u in zip(wave, directions, strict=True)) + phase)
        for wave, amplitude, phase in zip(wave_vectors, amplitudes, phases, strict=True)
    )
    return distance / (radius * lumps)


def _bias_fields(
    rng: np.random.Generator,
    grid: list[np.ndarray],
    field_of_view: np.ndarray,
    scale: float = 0.08,
) -> np.ndarray:
    """One smooth multiplicative field per modality: exp of a random quadratic, about ±20 % at
    the standard `scale`."""
    x, y, z = (axis / (extent / 2) for axis, extent in zip(grid, field_of_view, strict=True))
    monomials = np.stack(np.broadcast_arrays(x, y, z, x * x, y * y, z * z, x * y, x * z, y * z))
    coefficients = rng.normal(scale=scale, size=(len(MODALITIES), len(monomials))).astype(
        np.float32
    )
    return np.exp(np.tensordot(coefficients, monomials, axes=1))
