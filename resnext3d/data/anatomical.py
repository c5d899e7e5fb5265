"""An anatomical BraTS phantom: real brain anatomy (the MNI ICBM152 2009a template) with gliomas.

The simple phantom (`resnext3d.data.phantom`) draws ellipsoid heads, on which every network
reaches a whole-tumour Dice of 0.96-0.97, so it no longer tells networks apart. This one is a
harder benchmark, not a stand-in for real data. Each case is built from the grey matter, white
matter and CSF of the MNI ICBM152 2009a template that nilearn ships inside its wheel (nothing is
downloaded; ``pip install 'resnext3d[anatomy]'``):

- per-subject anatomy: the template scaled (head size about ±8 % per axis), slightly rotated and
  shifted, warped by a smooth random displacement field, with larger or smaller ventricles;
- gliomas: seeded in white matter and grown along it (a geodesic distance in a metric in which
  white matter is fast, grey matter slow and CSF almost impassable), pushing the surrounding
  brain aside (a radial displacement that fades with distance and towards the skull). High grades
  have a necrotic core in an enhancing rim that is full, partial, weak or absent; low grades a
  non-enhancing core, some with a faint enhancing patch or a cyst. Edema spreads from the core
  along white matter, sparing the cortex. About 15 % of cases are multifocal; sizes vary widely;
- four contrasts (FLAIR, T1, T1ce, T2) mixed from the tissue fractions of each voxel (partial
  volume), with per-case contrast jitter, tissue texture, blur, a multiplicative bias field and
  Rician noise of a per-case level, skull-stripped (exactly 0 outside the brain, as BraTS);
- optionally thick-slice acquisitions of FLAIR, T1 and T2 (2-D sequences in most protocols),
  interpolated back to the output grid, as BraTS resamples them.

Case ``i`` depends only on ``(seed, i)``; grades alternate HGG, LGG as in the simple phantom, and
``name_mapping.csv`` gives them. Label values and file names are those of the chosen release
(BraTS 2021: 1 necrosis and non-enhancing core, 2 edema, 4 enhancing; BraTS 2023: 3 enhancing).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from resnext3d.data.labels import NAME_MAPPING_FILE
from resnext3d.data.phantom import (
    COMPLETION_MARKER,
    case_grade,
    completed_parameters,
    generate_into_place,
    save_nifti,
)
from resnext3d.data.releases import MODALITIES
from resnext3d.data.releases import RELEASES as DATASET_RELEASES

log = logging.getLogger(__name__)

AnatomicalRelease = Literal["brats2021", "brats2023"]
RELEASES: tuple[str, ...] = ("brats2021", "brats2023")
# BraTS's field of view: 240 x 240 x 155 voxels of 1 mm.
FIELD_OF_VIEW_MM = (240.0, 240.0, 155.0)
DEFAULT_SPACING = (2.0, 2.0, 2.0)
# The 2-D sequences of most clinical protocols; T1ce is usually a 3-D acquisition.
THICK_SLICE_MODALITIES = ("flair", "t1", "t2")
INSTALL_HINT = "pip install 'resnext3d[anatomy]' (or `make install`, whose dev extra includes it)"
TEMPLATE_FILES = {
    tissue: f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
    for tissue in ("t1", "gm", "wm")
}
# Raised whenever the drawing changes, so that phantoms on disk are generated again.
GENERATOR_VERSION = 1

_CASE_IDS = {"brats2021": "BraTS2021_{index:05d}", "brats2023": "BraTS-GLI-{index:05d}-000"}

# Where the output volume is centred in MNI space (mm): the middle of the brain.
_BRAIN_CENTRE_MNI = np.array([0.0, -17.0, 9.0])
# The lateral ventricles' middle (MNI mm), about which ventricles grow or shrink.
_VENTRICLE_CENTRE_MNI = np.array([0.0, -8.0, 16.0])

# Tissue classes of the signal table: healthy first (in the order of the template's channels),
# then the tumour's (in the order of the painted regions).
GREY, WHITE, CSF, EDEMA, NECROSIS, SOLID, RIM = range(7)
# Relative signal of each tissue (rows) per modality (columns, MODALITIES order: flair, t1, t1ce,
# t2). Necrosis is fluid-like; "solid" is non-enhancing tumour; "rim" is the enhancing tumour's
# tissue before enhancement, which adds to T1ce only (_ENHANCEMENT times its strength).
_SIGNAL = np.array(
    [
        [0.74, 0.60, 0.62, 0.70],  # grey matter
        [0.55, 0.88, 0.88, 0.47],  # white matter: bright on T1, darker than grey on T2/FLAIR
        [0.10, 0.25, 0.25, 1.45],  # CSF: suppressed on FLAIR, dark on T1, bright on T2
        [1.10, 0.56, 0.57, 1.00],  # edema: bright on FLAIR and T2
        [0.55, 0.32, 0.34, 1.15],  # necrosis / cyst: fluid-like
        [0.98, 0.50, 0.52, 0.98],  # non-enhancing solid tumour
        [0.92, 0.56, 0.60, 0.82],  # enhancing tumour tissue, before enhancement
    ],
    dtype=np.float32,
)
_ENHANCEMENT = np.float32(0.75)
# Enhancement (0-1) above which a voxel of tumour core is labelled enhancing.
_ET_THRESHOLD = 0.2


@dataclass
class AnatomicalCase:
    """One generated case.

    Attributes:
        images: int16 volumes, (4, X, Y, Z), in ``MODALITIES`` order; 0 outside the brain.
        label_map: uint8 label map in the release's values.
        grade: "HGG" or "LGG".
        affine: the voxel-to-world (RAS) affine of images and label map.
        tissue: float32 (3, X, Y, Z) fractions of grey matter, white matter and CSF after the
            tumour's mass effect (without the tumour's own tissue), for tests and inspection.
        lesion_centres: each lesion's centre before its mass effect, in voxel coordinates.
    """

    images: np.ndarray
    label_map: np.ndarray
    grade: str
    affine: np.ndarray
    tissue: np.ndarray
    lesion_centres: list[np.ndarray]


# The template.


def template_dir() -> Path:
    """The folder of nilearn's bundled MNI templates; ImportError naming the extra without it."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the anatomical phantom needs the MNI ICBM152 template that the nilearn package "
            f"ships: {INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ImportError(
            f"nilearn at {Path(spec.origin).parent} lacks the MNI template {', '.join(missing)}; "
            f"reinstall it: {INSTALL_HINT}"
        )
    return folder


@dataclass(frozen=True)
class _Template:
    """Grey matter, white matter and CSF fractions and the depth in the brain (mm), (4, X, Y, Z),
    on a grid of `spacing` mm in MNI space whose voxel (0, 0, 0) lies at `origin`; and the
    brain's MNI bounding box."""

    tissue: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    brain_low: np.ndarray
    brain_high: np.ndarray


@lru_cache(maxsize=1)
def _template_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The template's grey, white and CSF fractions and depth in the brain (mm) at 1 mm, cropped
    to the brain, and the MNI position of its first voxel."""
    folder = template_dir()
    images = {tissue: nib.load(folder / name) for tissue, name in TEMPLATE_FILES.items()}
    affine = images["gm"].affine
    grey, white = (np.asarray(images[t].dataobj, dtype=np.float32) / 255 for t in ("gm", "wm"))
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    # The brain: grey and white matter with the sulci and ventricles between them, closed by a
    # 2 mm smoothing and filled.
    parenchyma = grey + white
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(parenchyma, 2.0) > 0.2)
    brain = ndimage.binary_opening(brain, iterations=2)
    low, high = (np.argwhere(brain).min(0) - 4).clip(0), np.argwhere(brain).max(0) + 5
    crop = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    grey, white, t1, brain = grey[crop], white[crop], t1[crop], brain[crop]
    # CSF fills the rest of the brain where T1 is dark (not vessels or dura, which are not).
    soft_brain = ndimage.gaussian_filter(brain.astype(np.float32), 0.7)
    grey_t1 = np.median(t1[grey > 0.9])
    dark = np.clip((grey_t1 * 1.1 - t1) / (grey_t1 * 0.4), 0, 1)
    csf = np.clip(soft_brain - grey - white, 0, 1) * np.maximum(dark, 0.3)
    # Depth below the brain's surface (mm), where the skull holds the brain against a mass.
    depth = ndimage.distance_transform_edt(brain).astype(np.float32)
    tissue = np.stack([grey, white, csf, depth]).astype(np.float32)
    origin = nib.affines.apply_affine(affine, low)
    return tissue, origin


def _template(spacing: Sequence[float]) -> _Template:
    """The template for an output grid of `spacing` mm: on a grid about as fine, but no coarser
    than 2 mm (nor finer than the template's 1 mm)."""
    step = np.clip(np.minimum(np.asarray(spacing, dtype=float), 2.0), 1.0, None)
    return _template_on_grid(tuple(float(s) for s in step))


@lru_cache(maxsize=4)
def _template_on_grid(step: tuple[float, ...]) -> _Template:
    """The template resampled to `step` mm, after a smoothing that removes what that grid
    cannot hold."""
    tissue, origin = _template_1mm()
    step = np.asarray(step)
    sigma = np.sqrt(np.maximum(step**2 - 1.0, 0)) / 2.355 * 2
    shape = np.floor((np.array(tissue.shape[1:]) - 1) / step).astype(int) + 1
    axes = [np.arange(n) * s for n, s in zip(shape, step, strict=True)]
    coordinates = np.meshgrid(*axes, indexing="ij")
    resampled = np.stack(
        [
            ndimage.map_coordinates(
                ndimage.gaussian_filter(channel, sigma) if sigma.any() else channel,
                coordinates,
                order=1,
            )
            for channel in tissue
        ]
    )
    brain = np.argwhere(resampled[:3].sum(0) > 0.5)
    return _Template(
        tissue=np.ascontiguousarray(resampled, dtype=np.float32),
        origin=origin,
        spacing=step,
        brain_low=origin + brain.min(0) * step,
        brain_high=origin + brain.max(0) * step,
    )


# The output grid.


def output_shape(spacing: Sequence[float]) -> tuple[int, int, int]:
    """The BraTS field of view (240 x 240 x 155 mm) in voxels of `spacing` mm."""
    return tuple(
        int(round(extent / s)) for extent, s in zip(FIELD_OF_VIEW_MM, spacing, strict=True)
    )


def anatomical_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel-to-world (RAS) affine: LPS voxel axes as BraTS, the volume centred on the brain."""
    shape, spacing = np.asarray(shape), np.asarray(spacing, dtype=float)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = _BRAIN_CENTRE_MNI - affine[:3, :3] @ ((shape - 1) / 2)
    return affine


# One case.


def anatomical_case(
    seed: int,
    index: int,
    release: AnatomicalRelease = "brats2021",
    spacing: Sequence[float] = DEFAULT_SPACING,
    shape: Sequence[int] | None = None,
    slice_thickness: float | None = None,
    tumour: bool = True,
) -> AnatomicalCase:
    """Draw case `index` of the phantom of `seed` (see the module's description).

    Args:
        seed, index: the case depends on these alone.
        release: the label values, "brats2021" (enhancing 4) or "brats2023" (enhancing 3).
        spacing: the output voxel size in mm.
        shape: voxels per axis; None for BraTS's 240 x 240 x 155 mm field of view.
        slice_thickness: None for 3-D acquisitions; else FLAIR, T1 and T2 are acquired as axial
            slices this thick (mm), then interpolated to the output grid.
        tumour: False draws the same subject without tumour (and no mass effect).
    """
    _check_release(release)
    spacing = tuple(float(s) for s in spacing)
    shape = tuple(int(n) for n in (shape or output_shape(spacing)))
    if slice_thickness is not None and slice_thickness <= 0:
        raise ValueError(f"slice_thickness must be positive, got {slice_thickness}")
    grade = case_grade(index)
    template = _template(spacing)
    affine = anatomical_affine(shape, spacing)
    anatomy_rng = np.random.default_rng([seed, index, 0])
    tumour_rng = np.random.default_rng([seed, index, 1])
    scanner_rng = np.random.default_rng([seed, index, 2])

    subject = _Subject.draw(anatomy_rng, template, affine, shape)
    lesions = _draw_lesions(tumour_rng, subject, grade) if tumour else []

    # Where each voxel's tissue was before the tumours pushed it aside; the skull holds the brain's
    # outer surface, so nothing moves within ~4 mm of it and the push grows over the next 8 mm.
    displaced = [axis + np.zeros(subject.box_shape, np.float32) for axis in subject.grid]
    if lesions:
        taper = np.clip((subject.sample(subject.grid, depth=True) - 4) / 8, 0, 1)
        for lesion in lesions:
            lesion.push(displaced, taper)
    tissue = subject.sample(displaced)
    brain = tissue.sum(0) > 0.5

    regions = np.zeros((4, *subject.box_shape), np.float32)  # edema, necrosis, solid, rim
    enhancement = np.zeros(subject.box_shape, np.float32)
    for lesion in lesions:
        lesion.paint(displaced, regions, enhancement)
    regions *= brain
    images = _contrasts(
        scanner_rng, tissue, regions, enhancement, brain, subject.spacing, slice_thickness
    )

    values = DATASET_RELEASES[release].labels
    labels = np.zeros(subject.box_shape, np.uint8)
    labels[regions[0] > 0.5] = values.edema
    labels[(regions[1:].sum(0) > 0.5) & (regions[1:].sum(0) >= regions[0])] = values.core
    labels[(regions[3] > 0.5) & (enhancement >= _ET_THRESHOLD)] = values.enhancing
    labels[~brain] = 0

    full_images = np.zeros((len(MODALITIES), *shape), np.int16)
    full_labels = np.zeros(shape, np.uint8)
    full_tissue = np.zeros((3, *shape), np.float32)
    full_images[(slice(None), *subject.box)] = images
    full_labels[subject.box] = labels
    full_tissue[(slice(None), *subject.box)] = tissue
    centres = [
        nib.affines.apply_affine(np.linalg.inv(affine), lesion.centre_world) for lesion in lesions
    ]
    return AnatomicalCase(full_images, full_labels, grade, affine, full_tissue, centres)


@dataclass
class _Subject:
    """One head: how output voxels map into the template, on the sub-grid holding the brain."""

    template: _Template
    box: tuple[slice, slice, slice]
    box_shape: tuple[int, int, int]
    grid: list[np.ndarray]  # world mm (RAS) of the box's voxels, sparse
    spacing: np.ndarray
    rotation: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    waves: np.ndarray  # (modes, 3) wave vectors, 1/mm
    phases: np.ndarray  # (3, modes)
    amplitudes: np.ndarray  # (3, modes) mm
    ventricle_change: float

    @classmethod
    def draw(
        cls, rng: np.random.Generator, template: _Template, affine: np.ndarray, shape: tuple
    ) -> _Subject:
        angles = np.deg2rad(rng.normal(0, 3.0, 3))
        rotation = _rotation(angles)
        scale = rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, 3)
        shift = rng.normal(0, 2.5, 3)
        modes = 5
        directions = rng.normal(size=(modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(50, 140, modes)
        waves = directions * (2 * np.pi / wavelengths)[:, None]
        phases = rng.uniform(0, 2 * np.pi, (3, modes))
        amplitudes = rng.normal(0, 1.6, (3, modes))
        ventricle_change = float(rng.uniform(-0.15, 0.45))

        # The sub-grid: the output voxels that the scaled template brain can reach, with margin.
        corners = np.array(
            [
                [(template.brain_low, template.brain_high)[bit][axis] for axis, bit in enumerate(b)]
                for b in np.ndindex(2, 2, 2)
            ]
        )
        world = (corners - _BRAIN_CENTRE_MNI) @ rotation * scale + _BRAIN_CENTRE_MNI + shift
        voxels = nib.affines.apply_affine(np.linalg.inv(affine), world)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        margin = 10.0 / spacing + 1
        low = np.floor(voxels.min(0) - margin).astype(int).clip(0, np.array(shape) - 1)
        high = np.ceil(voxels.max(0) + margin + 1).astype(int).clip(1, np.array(shape))
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        box_shape = tuple(int(b - a) for a, b in zip(low, high, strict=True))
        box_affine = affine.copy()
        box_affine[:3, 3] = nib.affines.apply_affine(affine, low)
        grid = [
            (box_affine[axis, axis] * np.arange(n) + box_affine[axis, 3])
            .astype(np.float32)
            .reshape([-1 if a == axis else 1 for a in range(3)])
            for axis, n in enumerate(box_shape)
        ]
        return cls(
            template,
            box,
            box_shape,
            grid,
            spacing,
            rotation,
            scale,
            shift,
            waves,
            phases,
            amplitudes,
            ventricle_change,
        )

    def template_coordinates(self, points: Sequence[np.ndarray]) -> np.ndarray:
        """Template voxel coordinates (3, ...) of subject world points (x, y, z arrays)."""
        x, y, z = points
        # The smooth warp, in subject space.
        warp = [np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)] * 3
        warp = [w.copy() for w in warp]
        for mode, wave in enumerate(self.waves):
            argument = np.float32(wave[0]) * x + np.float32(wave[1]) * y + np.float32(wave[2]) * z
            for axis in range(3):
                warp[axis] += np.float32(self.amplitudes[axis, mode]) * np.sin(
                    argument + np.float32(self.phases[axis, mode])
                )
        # Subject to template: undo shift, scale and rotation about the brain's centre.
        relative = [
            (p - np.float32(c + s)) / np.float32(k)
            for p, c, s, k in zip((x, y, z), _BRAIN_CENTRE_MNI, self.shift, self.scale, strict=True)
        ]
        mni = [
            sum(np.float32(self.rotation[axis, j]) * relative[j] for j in range(3))
            + np.float32(_BRAIN_CENTRE_MNI[axis])
            + warp[axis]
            for axis in range(3)
        ]
        # Larger ventricles: the tissue about them sampled from nearer their middle.
        _radial_push(mni, _VENTRICLE_CENTRE_MNI, 18.0, self.ventricle_change, reach=2.0)
        return np.stack(
            [
                (m - np.float32(o)) / np.float32(s)
                for m, o, s in zip(mni, self.template.origin, self.template.spacing, strict=True)
            ]
        )

    def sample(self, points: Sequence[np.ndarray], depth: bool = False) -> np.ndarray:
        """Grey, white and CSF fractions (3, ...) at subject world points, or with `depth` the
        depth in the brain (mm) alone."""
        coordinates = self.template_coordinates(points)
        channels = self.template.tissue[3:] if depth else self.template.tissue[:3]
        sampled = [
            ndimage.map_coordinates(channel, coordinates, order=1, prefilter=False)
            for channel in channels
        ]
        return sampled[0] if depth else np.stack(sampled)


def _rotation(angles: np.ndarray) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _radial_push(
    points: list[np.ndarray],
    centre: np.ndarray,
    radius: float,
    strength: float,
    reach: float = 1.5,
    taper: np.ndarray | None = None,
) -> None:
    """Move `points` (world mm, in place) towards `centre`, so that what is sampled there appears
    pushed outward: the inverse map of a mass of `radius` mm expanding by `strength` (0-1).

    Inside `radius` the points move in proportion to their distance; beyond it the push falls
    as radius²/distance² and fades over `reach` radii, times `taper` (0-1) where given.
    """
    if strength == 0:
        return
    offsets = [p - np.float32(c) for p, c in zip(points, centre, strict=True)]
    distance = np.sqrt(sum(o * o for o in offsets)) + np.float32(1e-3)
    t = distance / np.float32(radius)
    profile = np.where(t < 1, t, 1 / np.maximum(t, 1) ** 2) * np.exp(
        -((np.maximum(t - 1, 0) / np.float32(reach)) ** 2)
    )
    push = np.float32(strength * radius) * profile / distance
    if taper is not None:
        push = push * taper
    for axis in range(3):
        points[axis] -= offsets[axis] * push


# Tumours.


@dataclass
class _Lesion:
    """One tumour focus: geodesic distances (mm of the tissue metric) from its seed (core) and
    from its core (edema) on a local box of voxels, and how it looks."""

    box_origin: np.ndarray  # world mm of the local box's first voxel
    box_step: np.ndarray  # world mm per voxel along each axis (negative along L and P)
    core_distance: np.ndarray
    edema_distance: np.ndarray
    core_radius: float
    necrosis_radius: float  # 0: none
    edema_width: float
    centre_world: np.ndarray
    bulk_radius: float  # of the ball whose volume pushes the brain aside (mm)
    mass_effect: float  # 0-1
    rim: bool  # a high grade's enhancing rim; else a solid non-enhancing core
    enhancement: float  # the rim's (0-1), or a low grade's faint patch's (0: none)
    enhancing_side: np.ndarray  # unit vector
    enhancing_extent: float  # cosine above which the rim enhances: < -1 all round

    def push(self, points: list[np.ndarray], taper: np.ndarray) -> None:
        """Push the brain about the lesion aside: move the sampling `points` (in place)."""
        _radial_push(
            points, self.centre_world, self.bulk_radius, self.mass_effect, reach=1.5, taper=taper
        )

    def paint(self, points: list[np.ndarray], regions: np.ndarray, enhancement: np.ndarray) -> None:
        """Add this lesion's edema, necrosis, solid core and rim fractions (partial volume) to
        `regions` (4, ...) and its enhancement to `enhancement`, at the pushed `points`."""
        shape = enhancement.shape
        voxel = [
            (np.broadcast_to(p, shape) - np.float32(o)) / np.float32(s)
            for p, o, s in zip(points, self.box_origin, self.box_step, strict=True)
        ]
        near = np.ones(shape, bool)
        for axis, v in enumerate(voxel):
            near &= (v > -1) & (v < self.core_distance.shape[axis])
        if not near.any():
            return
        coordinates = np.stack([v[near] for v in voxel])
        far = 1e6
        core = ndimage.map_coordinates(self.core_distance, coordinates, order=1, cval=far)
        edema = ndimage.map_coordinates(self.edema_distance, coordinates, order=1, cval=far)
        # Soft memberships about a voxel wide: partial volume at the borders.
        width = np.float32(0.45 * np.abs(self.box_step).min())

        def inside(distance: np.ndarray, radius: float) -> np.ndarray:
            return (1 / (1 + np.exp(np.clip((distance - radius) / width, -30, 30)))).astype(
                np.float32
            )

        in_core = inside(core, self.core_radius)
        in_necrosis = inside(core, self.necrosis_radius) if self.necrosis_radius > 0 else 0 * core
        in_edema = np.clip(inside(edema, self.edema_width) - in_core, 0, 1)
        shell = np.clip(in_core - in_necrosis, 0, 1)
        offsets = [
            np.broadcast_to(p, shape)[near] - np.float32(c)
            for p, c in zip(points, self.centre_world, strict=True)
        ]
        norm = np.sqrt(sum(o * o for o in offsets)) + np.float32(1e-3)
        pairs = zip(self.enhancing_side, offsets, strict=True)
        cosine = sum(np.float32(n) * o for n, o in pairs) / norm
        local = regions[:, near]
        local[0] = np.maximum(local[0], in_edema)
        local[1] = np.maximum(local[1], in_necrosis)
        if self.rim:
            # All round where the extent is below -1, on one side only above; soft edges.
            side = np.clip((cosine - np.float32(self.enhancing_extent)) / 0.3 + 0.5, 0, 1)
            strength = np.float32(self.enhancement) * side * (shell > 0.5)
            local[3] = np.maximum(local[3], shell)
        else:
            strength = np.zeros_like(shell)
            solid = shell
            if self.enhancement > 0:  # a faint patch on one side of the core
                patch = (cosine > 0.6) & (shell > 0.5)
                strength = np.float32(self.enhancement) * patch
                local[3] = np.maximum(local[3], shell * patch)
                solid = shell * ~patch
            local[2] = np.maximum(local[2], solid)
        regions[:, near] = local
        enhancement[near] = np.maximum(enhancement[near], strength)


def _draw_lesions(rng: np.random.Generator, subject: _Subject, grade: str) -> list[_Lesion]:
    """One lesion, or in about 15 % of cases two or three (multifocal)."""
    count = 1 if rng.uniform() >= 0.15 else int(rng.choice([2, 3], p=[0.75, 0.25]))
    # White-matter voxels to seed a tumour in, found on a coarse grid.
    step = max(1, int(round(4.0 / subject.spacing.min())))
    coarse = [axis[tuple(slice(None, None, step) for _ in range(3))] for axis in subject.grid]
    candidates = np.argwhere(subject.sample(coarse)[1] > 0.85) * step
    if not len(candidates):
        return []
    high = grade == "HGG"
    lesions: list[_Lesion] = []
    for number in range(count):
        for _attempt in range(20):  # foci at least 3 cm apart
            seed = candidates[rng.integers(len(candidates))]
            world = np.array([subject.grid[a].ravel()[seed[a]] for a in range(3)], float)
            if all(np.linalg.norm(world - other.centre_world) > 30 for other in lesions):
                break
        # Core radius and the edema's width in mm of the tissue metric: from 4 mm to 2.4 cm.
        core_radius = float(np.exp(rng.uniform(np.log(4.0), np.log(24.0))))
        if number > 0:
            core_radius *= rng.uniform(0.3, 0.7)
        narrowest, widest = (6.0, 35.0) if high else (4.0, 20.0)
        edema_width = float(np.exp(rng.uniform(np.log(narrowest), np.log(widest))))
        lesions.append(_grow(rng, subject, seed, core_radius, edema_width, high))
    return lesions


def _grow(
    rng: np.random.Generator,
    subject: _Subject,
    seed: np.ndarray,
    core_radius: float,
    edema_width: float,
    high: bool,
) -> _Lesion:
    """Grow a lesion from `seed` (sub-grid voxel) in the subject's brain without tumour."""
    spacing = subject.spacing
    reach = np.ceil((core_radius * 1.3 + edema_width * 1.3) / spacing + 3).astype(int)
    low = np.maximum(seed - reach, 0)
    high_index = np.minimum(seed + reach + 1, subject.box_shape)
    points = [
        subject.grid[axis]
        .ravel()[low[axis] : high_index[axis]]
        .reshape([-1 if a == axis else 1 for a in range(3)])
        for axis in range(3)
    ]
    grey, white, csf = subject.sample(points)
    shape = grey.shape
    # Irregular outlines: the metric varies smoothly by about ±30 %.
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0 / spacing)
    texture *= np.float32(1 / max(float(texture.std()), 1e-6))
    irregular = np.exp(np.float32(0.3) * texture)
    # The bulk invades white matter fastest, grey matter slower; edema spreads along white matter
    # and spares the cortex; neither crosses CSF.
    core_cost = irregular / (0.08 + white + 0.45 * grey + 0.01 * csf)
    edema_cost = np.sqrt(irregular) / (0.03 + white + 0.2 * grey + 0.005 * csf)
    source = np.zeros(shape, bool)
    source[tuple(seed - low)] = True
    core_distance = _geodesic(source, core_cost, spacing, core_radius * 1.3)
    core = core_distance < core_radius
    edema_distance = _geodesic(core, edema_cost, spacing, edema_width * 1.3)

    voxel_volume = float(np.prod(spacing))
    core_volume = core.sum() * voxel_volume
    edema_volume = ((edema_distance < edema_width) & ~core).sum() * voxel_volume
    bulk_radius = max((3 * (core_volume + 0.25 * edema_volume) / (4 * np.pi)) ** (1 / 3), 2.0)
    centre = np.argwhere(core).mean(0) if core.any() else (seed - low).astype(float)
    box_step = np.array([float(p.ravel()[1] - p.ravel()[0]) for p in subject.grid])
    box_origin = np.array([float(p.ravel()[0]) for p in points])

    # Appearance, where the grades overlap: some high grades enhance weakly, on one side or not
    # at all and lack necrosis; some low grades have a faint enhancing patch or a cyst.
    side = rng.normal(size=3)
    side /= np.linalg.norm(side)
    if high:
        necrosis = rng.uniform(0.35, 0.75) * core_radius if rng.uniform() < 0.85 else 0.0
        kind = rng.choice(["full", "partial", "weak", "absent"], p=[0.55, 0.28, 0.12, 0.05])
        enhancement = {"full": rng.uniform(0.6, 1.0), "partial": rng.uniform(0.4, 1.0),
                       "weak": rng.uniform(0.22, 0.4), "absent": 0.0}[kind]  # fmt: skip
        extent = -1.5 if kind in ("full", "weak") else rng.uniform(-0.5, 0.5)
        mass_effect = rng.uniform(0.15, 0.45)
    else:
        necrosis = rng.uniform(0.2, 0.5) * core_radius if rng.uniform() < 0.12 else 0.0
        enhancement = rng.uniform(0.22, 0.45) if rng.uniform() < 0.25 else 0.0
        extent = 1.5
        mass_effect = rng.uniform(0.05, 0.3)
    return _Lesion(
        box_origin=box_origin,
        box_step=box_step,
        core_distance=core_distance,
        edema_distance=edema_distance,
        core_radius=core_radius,
        necrosis_radius=necrosis,
        edema_width=edema_width,
        centre_world=box_origin + centre * box_step,
        bulk_radius=bulk_radius,
        mass_effect=mass_effect,
        rim=high and enhancement > 0,
        enhancement=enhancement,
        enhancing_side=side,
        enhancing_extent=extent,
    )


# The 26 neighbour offsets, one of each opposite pair (the other is the same shift reversed).
_OFFSETS = [o for o in np.ndindex(3, 3, 3) if o > (1, 1, 1)]


def _geodesic(
    source: np.ndarray, cost: np.ndarray, spacing: np.ndarray, limit: float
) -> np.ndarray:
    """The distance from `source` (bool) where a step costs its length (mm) times the `cost` of
    the voxel it enters, up to `limit` (farther voxels keep a larger value): a few sweeps of a
    26-neighbour relaxation, until nothing within the limit changes."""
    distance = np.where(source, np.float32(0), np.float32(1e6))
    steps = []
    for offset in _OFFSETS:
        delta = np.array(offset) - 1
        length = np.float32(np.sqrt(((delta * spacing) ** 2).sum()))
        steps.append((delta, cost * length))
    for _sweep in range(int(limit / spacing.min() / 0.9) + 2):
        before = distance.copy()
        for delta, step_cost in steps:
            for sign in (1, -1):
                d = delta * sign
                target = tuple(
                    slice(max(k, 0), n + min(k, 0)) for k, n in zip(d, distance.shape, strict=True)
                )
                origin = tuple(
                    slice(max(-k, 0), n + min(-k, 0))
                    for k, n in zip(d, distance.shape, strict=True)
                )
                np.minimum(
                    distance[target],
                    distance[origin] + step_cost[target],
                    out=distance[target],
                )
        changed = (distance != before) & (distance < limit)
        if not changed.any():
            break
    return distance


# Imaging.


def _contrasts(
    rng: np.random.Generator,
    tissue: np.ndarray,
    regions: np.ndarray,
    enhancement: np.ndarray,
    brain: np.ndarray,
    spacing: np.ndarray,
    slice_thickness: float | None,
) -> np.ndarray:
    """The four int16 images (MODALITIES order) of a sub-grid's tissue: partial-volume mixing,
    per-case contrasts, texture, blur, bias field, thick slices, Rician noise, skull stripping."""
    shape = brain.shape
    # Scanner-to-scanner contrast: every tissue's signal jittered, the grey/white contrast more.
    table = _SIGNAL * rng.normal(1, 0.05, _SIGNAL.shape).astype(np.float32)
    table[GREY] = table[WHITE] + (table[GREY] - table[WHITE]) * rng.uniform(0.7, 1.3, 4)
    tumour = np.clip(regions.sum(0), 0, 1)
    fractions = np.concatenate([tissue * (1 - tumour), regions])
    signal = np.tensordot(table.T, fractions, axes=1)
    t1ce = MODALITIES.index("t1ce")
    gain = _ENHANCEMENT * np.float32(rng.uniform(0.8, 1.2))
    signal[t1ce] += gain * enhancement * regions[3]
    # Texture: healthy tissue nearly uniform, tumour heterogeneous.
    for channel in range(len(MODALITIES)):
        field = _smooth_noise(rng, shape, 3.0 / spacing)
        amplitude = np.float32(0.025) + np.float32(0.12) * tumour
        signal[channel] *= 1 + amplitude * field

    fov = spacing * np.array(shape)
    axes = [
        ((np.arange(n) - (n - 1) / 2) * s / (f / 2))
        .astype(np.float32)
        .reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (n, s, f) in enumerate(zip(shape, spacing, fov, strict=True))
    ]
    x, y, z = axes
    monomials = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    bias_scale = rng.uniform(0.04, 0.2)
    noise_level = rng.uniform(0.012, 0.05)
    images = np.zeros((len(MODALITIES), *shape), np.int16)
    for channel, modality in enumerate(MODALITIES):
        blur = rng.uniform(0.4, 1.1) / spacing  # the point spread (sigma), in voxels
        image = ndimage.gaussian_filter(signal[channel], blur)
        coefficients = rng.normal(0, bias_scale, len(monomials)).astype(np.float32)
        image *= np.exp(sum(c * m for c, m in zip(coefficients, monomials, strict=True)))
        sigma = np.float32(noise_level * rng.uniform(0.8, 1.25) * 0.88)
        thick = slice_thickness is not None and modality in THICK_SLICE_MODALITIES
        if thick and slice_thickness > spacing[2]:
            image = _thick_slices(rng, image, spacing[2], slice_thickness, sigma)
        else:
            if thick:  # slices no thicker than the output's: blurred along z only
                image = ndimage.gaussian_filter1d(image, slice_thickness / 2.355 / spacing[2], 2)
            image = _rician(rng, image, sigma)
        scale = np.float32(rng.uniform(200, 1500))
        images[channel] = np.rint(image * scale * brain).clip(0, np.iinfo(np.int16).max)
    return images


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma: np.ndarray) -> np.ndarray:
    """Gaussian noise smoothed by `sigma` voxels, scaled to unit standard deviation."""
    # Drawn on a coarser grid and smoothed there, then zoomed: the same field, far faster.
    factor = int(max(1, np.floor(sigma.min() / 1.5)))
    coarse_shape = tuple(int(np.ceil(n / factor)) + (factor > 1) for n in shape)
    field = ndimage.gaussian_filter(
        rng.standard_normal(coarse_shape).astype(np.float32), sigma / factor
    )
    if factor > 1:
        coordinates = np.meshgrid(*[np.arange(n) / factor for n in shape], indexing="ij")
        field = ndimage.map_coordinates(field, coordinates, order=1)
    return field / np.float32(max(float(field.std()), 1e-6))


def _rician(rng: np.random.Generator, image: np.ndarray, sigma: np.float32) -> np.ndarray:
    """The magnitude of `image` with Gaussian noise of `sigma` in its real and imaginary parts."""
    real, imaginary = rng.standard_normal((2, *image.shape), dtype=np.float32) * sigma
    return np.hypot(image + real, imaginary)


def _thick_slices(
    rng: np.random.Generator,
    image: np.ndarray,
    spacing: float,
    thickness: float,
    sigma: np.float32,
) -> np.ndarray:
    """`image` acquired as contiguous axial slices `thickness` mm thick (noise added to the
    slices), then linearly interpolated back to its grid of `spacing` mm along z."""
    n = image.shape[2]
    extent = (n - 1) * spacing
    offset = rng.uniform(0, thickness)
    centres = np.arange(offset - thickness, extent + thickness, thickness)
    # Each slice averages `thickness` mm: a box profile, smoothed by the slice's edges.
    profile = ndimage.uniform_filter1d(image, max(1, int(round(thickness / spacing))), axis=2)
    slices = _along_z(profile, np.clip(centres / spacing, 0, n - 1))
    slices = _rician(rng, slices, sigma)
    return _along_z(slices, (np.arange(n) * spacing - centres[0]) / thickness)


def _along_z(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`volume` linearly interpolated along its last axis at fractional `positions`."""
    positions = np.clip(positions, 0, volume.shape[2] - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, volume.shape[2] - 1)
    weight = (positions - below).astype(np.float32)
    return volume[..., below] * (1 - weight) + volume[..., above] * weight


# Writing a data set.


def generate_anatomical_phantom(
    out_dir: str | Path,
    cases: int = 100,
    seed: int = 0,
    release: AnatomicalRelease = "brats2021",
    spacing: Sequence[float] = DEFAULT_SPACING,
    shape: Sequence[int] | None = None,
    slice_thickness: float | None = None,
) -> Path:
    """Write `cases` anatomical cases in `release`'s layout, ``name_mapping.csv`` (the grades)
    and the completion marker; see `anatomical_case` for the arguments. Returns `out_dir`."""
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    _check_release(release)
    template_dir()  # the missing extra named before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / COMPLETION_MARKER).unlink(missing_ok=True)
    started = time.perf_counter()
    ids, grades = [], []
    naming = DATASET_RELEASES[release]
    for index in range(cases):
        case = anatomical_case(seed, index, release, spacing, shape, slice_thickness)
        case_id = _CASE_IDS[release].format(index=index)
        case_dir = out_dir / case_id
        case_dir.mkdir(exist_ok=True)
        for suffix, image in zip(naming.channel_suffixes, case.images, strict=True):
            save_nifti(image, case.affine, case_dir / f"{case_id}{naming.separator}{suffix}.nii.gz")
        label_file = f"{case_id}{naming.separator}{naming.label_suffix}.nii.gz"
        save_nifti(case.label_map, case.affine, case_dir / label_file)
        ids.append(case_id)
        grades.append(case.grade)
    log.info("%d anatomical phantom cases in %.1f s", cases, time.perf_counter() - started)

    # The grade file the classification data module reads, as the simple phantom writes it.
    with (out_dir / NAME_MAPPING_FILE).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["Grade", "BraTS_2020_subject_ID"])
        writer.writerows(zip(grades, ids, strict=True))
    parameters = anatomical_parameters(cases, seed, release, spacing, shape, slice_thickness)
    (out_dir / COMPLETION_MARKER).write_text(json.dumps(parameters) + "\n")
    return out_dir


def ensure_anatomical_phantom(
    out_dir: str | Path,
    cases: int = 100,
    seed: int = 0,
    release: AnatomicalRelease = "brats2021",
    spacing: Sequence[float] = DEFAULT_SPACING,
    shape: Sequence[int] | None = None,
    slice_thickness: float | None = None,
) -> Path:
    """Generate the anatomical phantom in `out_dir` unless a complete one with these parameters
    is there; as `resnext3d.data.phantom.ensure_phantom` (built beside it and renamed into place;
    a phantom of other parameters, of either kind, is replaced; another non-empty folder raises
    DataError)."""
    _check_release(release)
    parameters = anatomical_parameters(cases, seed, release, spacing, shape, slice_thickness)
    if completed_parameters(Path(out_dir)) != parameters:
        template_dir()  # the missing extra named before anything is moved or written
    return generate_into_place(
        Path(out_dir),
        parameters,
        lambda staging: generate_anatomical_phantom(
            staging, cases, seed, release, spacing, shape, slice_thickness
        ),
    )


def anatomical_parameters(
    cases: int,
    seed: int,
    release: str,
    spacing: Sequence[float],
    shape: Sequence[int] | None,
    slice_thickness: float | None,
) -> dict:
    """What the completion marker records: a folder is generated again when any of it differs."""
    spacing = [float(s) for s in spacing]
    return {
        "realism": "anatomical",
        "version": GENERATOR_VERSION,
        "cases": int(cases),
        "seed": int(seed),
        "release": release,
        "shape": [int(n) for n in (shape or output_shape(spacing))],
        "spacing": spacing,
        "slice_thickness": None if slice_thickness is None else float(slice_thickness),
    }


def _check_release(release: str) -> None:
    if release not in RELEASES:
        raise ValueError(f"release must be one of {', '.join(RELEASES)}, got {release!r}")
