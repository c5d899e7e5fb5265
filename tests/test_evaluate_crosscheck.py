"""`resnext3d evaluate` against an independent BraTS 2023 lesion-wise scorer on random cases.

The scorer, tests/independent/brats2023_scores.py, runs in .venv-crosscheck (`make test-slow` builds
it from requirements/crosscheck.lock): the organisers' procedure on the libraries their script uses
(cc3d, scipy, DeepMind's surface-distance), none of the project's code, torch or MONAI. Both score
the same NIfTI files; the per-case, per-region numbers must agree: Dice and the lesion counts
exactly, HD95 within HD95_TOLERANCE_MM (see there why).

Slow only for the scorer's environment, which `make test` does not build: the cases are small and
the whole test takes seconds.
"""

import csv
import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from resnext3d.evaluation import WORST_HD95_MM
from resnext3d.evaluation.evaluate import evaluate_main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CROSSCHECK_PYTHON = ROOT / ".venv-crosscheck" / "bin" / "python"
SCORER = ROOT / "tests" / "independent" / "brats2023_scores.py"
REGIONS = ("tc", "wt", "et")
EXACT = ("dice", "lesion_dice", "lesion_tp", "lesion_fn", "lesion_fp")
DISTANCES = ("hd95", "lesion_hd95")
# HD95: both take the organisers' definition (distances between surface elements at the corners of
# the voxel grid, each direction's 95th percentile weighted by the elements' areas), the project
# through MONAI's sub-voxel edges, the scorer through DeepMind's surface-distance; the areas are
# float32 in MONAI and float64 there, so the percentile can land on a neighbouring distance only
# where two cumulative areas differ by float32 rounding: agreement to HD95_TOLERANCE_MM.
HD95_TOLERANCE_MM = 1e-4


def crosscheck_python() -> Path:
    """The scorer's interpreter; under `make test-slow` (RESNEXT3D_CROSSCHECK=required) its absence
    fails the test, elsewhere it skips with how to build it."""
    if CROSSCHECK_PYTHON.exists():
        return CROSSCHECK_PYTHON
    message = (
        f"{CROSSCHECK_PYTHON} is missing: `make test-slow` builds it (requirements/crosscheck.lock)"
    )
    if os.environ.get("RESNEXT3D_CROSSCHECK") == "required":
        pytest.fail(message)
    pytest.skip(message)


def save(label_map: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label_map.astype(np.uint8), np.diag([*spacing, 1.0])), path)


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii, strict=True))
    return distance <= 1.0


def paint(shape, lesions) -> np.ndarray:
    """A BraTS 2023 label map of lesions, each (centre, radius in voxels, which tissues): edema
    (2) around a necrotic core (1) with an enhancing part (3) off its centre."""
    label_map = np.zeros(shape, np.uint8)
    for centre, radius, tissues in lesions:
        centre = np.asarray(centre, float)
        if "ed" in tissues:
            label_map[ellipsoid(shape, centre, radius * np.array([1.0, 1.0, 0.8]))] = 2
        if "ncr" in tissues:
            label_map[ellipsoid(shape, centre, 0.6 * radius * np.ones(3))] = 1
        if "et" in tissues:
            label_map[ellipsoid(shape, centre + 0.3 * radius, 0.45 * radius * np.ones(3))] = 3
    return label_map


def random_case(rng: np.random.Generator, shape, spacing):
    """A reference of 1-5 lesions (some small, some pairs a few voxels apart, which the dilation
    merges or not) and a prediction that finds each exactly, off by a voxel or two, grown or
    shrunk, or misses it, plus false positives (blobs and single voxels) and near misses."""
    tissue_sets = [("ed", "ncr", "et"), ("ed",), ("ed", "ncr"), ("ncr", "et"), ("et",)]
    reference, prediction = [], []
    for _ in range(rng.integers(1, 6)):
        radius = rng.choice([1.2, 1.8, 2.5, 4.0, 6.0])  # the smallest ones: below 50 mm³
        centre = rng.uniform(radius + 1, np.array(shape) - radius - 2)
        tissues = tissue_sets[rng.integers(len(tissue_sets))]
        reference.append((centre, radius, tissues))
        if rng.random() < 0.3:  # a neighbour a few voxels away: one lesion or two
            gap = radius + rng.uniform(2, 9)
            offset = rng.normal(size=3)
            reference.append(
                (np.clip(centre + gap * offset / np.linalg.norm(offset), 2, np.array(shape) - 3),
                 rng.choice([1.5, 2.5, 3.5]), tissues)
            )  # fmt: skip
    for centre, radius, tissues in reference:
        fate = rng.random()
        if fate < 0.2:
            continue  # missed
        if fate < 0.45:
            prediction.append((centre, radius, tissues))  # exact
        elif fate < 0.55:  # beside it, within the dilation or just beyond
            prediction.append((centre + radius + rng.uniform(1, 5), 1.5, tissues))
        else:  # off by up to 2 voxels, grown or shrunk, tissues partly wrong
            shift = rng.integers(-2, 3, size=3)
            wrong = tissue_sets[rng.integers(len(tissue_sets))] if rng.random() < 0.3 else tissues
            prediction.append((centre + shift, radius * rng.uniform(0.6, 1.4), wrong))
    for _ in range(rng.integers(0, 3)):  # false positive blobs
        radius = rng.choice([1.5, 3.0])
        centre = rng.uniform(radius + 1, np.array(shape) - radius - 2)
        prediction.append((centre, radius, tissue_sets[rng.integers(len(tissue_sets))]))
    predicted = paint(shape, prediction)
    for _ in range(rng.integers(0, 4)):  # single stray voxels
        predicted[tuple(rng.integers(0, shape))] = rng.choice([1, 2, 3])
    return predicted, paint(shape, reference)


SPACINGS = [(1.0, 1.0, 1.0), (1.0, 1.0, 1.5), (2.0, 2.0, 3.0)]
SHAPES = [(48, 48, 40), (40, 44, 36), (32, 32, 24)]


def random_cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    rng = np.random.default_rng(2023)
    cases = {}
    for index in range(18):
        spacing, shape = SPACINGS[index % 3], SHAPES[index % 3]
        predicted, reference = random_case(rng, shape, spacing)
        cases[f"BraTS-GLI-{index:05d}-000"] = (predicted, reference, spacing)
    empty = np.zeros((32, 32, 24), np.uint8)
    blob = paint(empty.shape, [((16, 16, 12), 4.0, ("ed", "ncr", "et"))])
    cases["BraTS-GLI-90000-000"] = (empty, empty, (1.0, 1.0, 1.5))  # both empty: Dice 1, HD95 0
    cases["BraTS-GLI-90001-000"] = (blob, empty, (1.0, 1.0, 1.5))  # only false positives
    cases["BraTS-GLI-90002-000"] = (empty, blob, (2.0, 2.0, 3.0))  # every lesion missed
    return cases


def hand_worked_case():
    """Two enhancing 4³ cubes (64 mm³, kept) 16 voxels apart: one found exactly, one missed, and
    a false positive cube; the same in TC, WT and ET."""
    reference, prediction = np.zeros((32, 32, 32), np.uint8), np.zeros((32, 32, 32), np.uint8)
    reference[4:8, 4:8, 4:8] = reference[20:24, 4:8, 4:8] = 3
    prediction[4:8, 4:8, 4:8] = prediction[20:24, 20:24, 20:24] = 3
    return prediction, reference, (1.0, 1.0, 1.0)


def score_both(tmp_path: Path, cases) -> tuple[dict, dict]:
    """{case: {region: {metric: value}}} of `resnext3d evaluate` and of the independent scorer."""
    python = crosscheck_python()
    predictions, references = tmp_path / "predictions", tmp_path / "references"
    for case, (predicted, reference, spacing) in cases.items():
        save(predicted, spacing, predictions / f"{case}_seg.nii.gz")
        save(reference, spacing, references / f"{case}-seg.nii.gz")
    out = tmp_path / "scores.csv"
    status = evaluate_main(
        [str(predictions), str(references), "--release", "brats2023", "--out", str(out)]
    )
    assert status == 0
    with out.open(newline="") as file:
        ours = {
            row["case_id"]: {
                region: {
                    metric: float(row[f"{metric}_{region}"]) for metric in (*EXACT, *DISTANCES)
                }
                for region in REGIONS
            }
            for row in csv.DictReader(file)
        }
    result = subprocess.run(
        [str(python), str(SCORER), str(predictions), str(references)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return ours, json.loads(result.stdout)


def disagreements(ours: dict, theirs: dict) -> list[str]:
    found = []
    for case in sorted(theirs):
        for region in REGIONS:
            a, b = ours[case][region], theirs[case][region]
            found += [
                f"{case} {region} {metric}: ours {a[metric]!r}, independent {b[metric]!r}"
                for metric in EXACT
                if a[metric] != pytest.approx(b[metric], rel=1e-12, abs=1e-12)
            ]
            found += [
                f"{case} {region} {metric}: ours {a[metric]:.6f}, independent {b[metric]:.6f}"
                for metric in DISTANCES
                if abs(a[metric] - b[metric]) > HD95_TOLERANCE_MM
            ]
    return found


def test_the_hand_worked_case_scores_the_same_in_both(tmp_path):
    ours, theirs = score_both(tmp_path, {"BraTS-GLI-00001-000": hand_worked_case()})
    for scores in (ours, theirs):
        for region in REGIONS:
            case = scores["BraTS-GLI-00001-000"][region]
            counts = (case["lesion_tp"], case["lesion_fn"], case["lesion_fp"])
            assert counts == (1, 1, 1)
            assert case["lesion_dice"] == pytest.approx((1 + 0 + 0) / 3)
            assert case["lesion_hd95"] == pytest.approx((0 + 2 * WORST_HD95_MM) / 3)
            assert case["dice"] == pytest.approx(0.5)  # 64 of 128 voxels on either side overlap


def test_random_cases_score_the_same_in_both(tmp_path):
    cases = random_cases()
    ours, theirs = score_both(tmp_path, cases)
    assert ours.keys() == theirs.keys() == cases.keys()
    assert disagreements(ours, theirs) == []
    # The cases cover what they should: merged, small, missed and falsely found lesions.
    counts = {
        metric: sum(theirs[case][region][metric] for case in cases for region in REGIONS)
        for metric in ("lesion_tp", "lesion_fn", "lesion_fp")
    }
    assert min(counts.values()) >= 10, counts


def test_a_few_far_voxels_weigh_in_the_hd95_by_their_surface_area(tmp_path):
    # A 4³ cube found exactly, and 3 lone voxels ~30 mm away: 3 of 59 edge voxels (5.1%), but 5.2
    # of 86.4 mm² of surface (6.0%), so the area-weighted 95th percentile is the far distance;
    # counting voxels (MONAI's compute_hausdorff_distance) would give 2.97 mm.
    reference = np.zeros((32, 32, 32), np.uint8)
    reference[2:6, 2:6, 2:6] = 3
    prediction = reference.copy()
    prediction[26, 4, 26] = prediction[26, 8, 26] = prediction[26, 12, 26] = 3
    case = "BraTS-GLI-00003-000"
    ours, theirs = score_both(tmp_path, {case: (prediction, reference, (1.0, 1.0, 1.0))})
    for region in REGIONS:
        a, b = ours[case][region], theirs[case][region]
        assert a["hd95"] == pytest.approx(b["hd95"], abs=HD95_TOLERANCE_MM)
        assert a["hd95"] == pytest.approx(28.91, abs=0.01)
        # Lesion-wise, the lone voxels are false positives (374 mm each) in both.
        assert (a["lesion_tp"], a["lesion_fp"]) == (b["lesion_tp"], b["lesion_fp"]) == (1, 3)
        assert a["lesion_hd95"] == b["lesion_hd95"] == pytest.approx(3 * WORST_HD95_MM / 4)
