"""`resnext3d evaluate` in process on label maps written with nibabel: its CSV against the
scoring module on the same arrays, the hand-worked case, and the files it refuses."""

import csv

import nibabel as nib
import numpy as np
import pytest
from test_lesionwise import cubes

from resnext3d.cli import main
from resnext3d.evaluation import WORST_HD95_MM, case_scores

SPACING = (1.0, 1.0, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = (-16.0, -16.0, -32.0)
# BraTS 2023 values: 2 edema, 3 enhancing.
EDEMA, ENHANCING = 2, 3
FOUND, MISSED, FALSE_POSITIVE = (4, 4, 4), (20, 4, 4), (20, 20, 20)
HAND_WORKED, SHIFTED = "BraTS-GLI-00001-000", "BraTS-GLI-00002-000"


def label_map(mask: np.ndarray, value: int) -> np.ndarray:
    return (mask * value).astype(np.uint8)


# Per case: (prediction, reference). The hand-worked case as edema alone (WT; TC and ET empty):
# one lesion found, one missed, one false positive. The other: an enhancing 6³ cube predicted
# 2 voxels (4 mm) off along z, the same in all three regions.
CASES = {
    HAND_WORKED: (
        label_map(cubes(FOUND, FALSE_POSITIVE), EDEMA),
        label_map(cubes(FOUND, MISSED), EDEMA),
    ),
    SHIFTED: (
        label_map(cubes((8, 8, 10), size=6), ENHANCING),
        label_map(cubes((8, 8, 8), size=6), ENHANCING),
    ),
}


def save(array: np.ndarray, path, affine: np.ndarray = AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


@pytest.fixture
def folders(tmp_path):
    """This project's predictions/<case>_seg.nii.gz against a BraTS 2023 data folder."""
    predictions, references = tmp_path / "predictions", tmp_path / "BraTS2023"
    for case_id, (prediction, reference) in CASES.items():
        save(prediction, predictions / f"{case_id}_seg.nii.gz")
        save(reference, references / case_id / f"{case_id}-seg.nii.gz")
    return predictions, references


def evaluate(*args) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", *map(str, args)])
    return exit_.value.code


def read_rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_the_csv_holds_the_modules_scores_of_every_case(folders, tmp_path):
    predictions, references = folders
    out = tmp_path / "scores" / "brats.csv"

    assert evaluate(predictions, references, "--out", out) == 0

    rows = {row["case_id"]: row for row in read_rows(out)}
    assert sorted(rows) == sorted(CASES)
    for case_id, (prediction, reference) in CASES.items():
        expected = case_scores(prediction, reference, "brats2023", SPACING)
        for region, scores in expected.items():
            r = region.lower()
            assert float(rows[case_id][f"dice_{r}"]) == scores.dice
            assert float(rows[case_id][f"hd95_{r}"]) == scores.hd95
            assert float(rows[case_id][f"lesion_dice_{r}"]) == scores.lesion_dice
            assert float(rows[case_id][f"lesion_hd95_{r}"]) == scores.lesion_hd95
            assert int(rows[case_id][f"lesion_tp_{r}"]) == scores.true_positives
            assert int(rows[case_id][f"lesion_fn_{r}"]) == scores.false_negatives
            assert int(rows[case_id][f"lesion_fp_{r}"]) == scores.false_positives
    assert rows[HAND_WORKED]["prediction"] == f"{HAND_WORKED}_seg.nii.gz"


def test_the_hand_worked_cases_reappear_with_their_summary(folders, tmp_path):
    predictions, references = folders
    assert evaluate(predictions, references) == 0  # the CSV goes into PREDICTIONS by default

    rows = {row["case_id"]: row for row in read_rows(predictions / "scores.csv")}
    hand_worked = rows[HAND_WORKED]
    assert float(hand_worked["lesion_dice_wt"]) == pytest.approx((1 + 0 + 0) / 3)
    assert float(hand_worked["lesion_hd95_wt"]) == pytest.approx(2 * WORST_HD95_MM / 3)
    assert [hand_worked[f"lesion_{count}_wt"] for count in ("tp", "fn", "fp")] == ["1", "1", "1"]
    assert (hand_worked["lesion_dice_et"], hand_worked["lesion_hd95_et"]) == ("1.0", "0.0")
    shifted = rows[SHIFTED]
    assert float(shifted["dice_et"]) == pytest.approx(2 / 3)
    assert float(shifted["hd95_et"]) == pytest.approx(4.0)  # 2 voxels of 2 mm

    summary = {row["statistic"]: row for row in read_rows(predictions / "scores_summary.csv")}
    assert float(summary["mean"]["lesion_dice_wt"]) == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert float(summary["median"]["lesion_dice_wt"]) == pytest.approx(0.5)
    assert float(summary["std"]["lesion_dice_wt"]) == pytest.approx(np.std([1 / 3, 2 / 3], ddof=1))


def test_another_tools_files_against_a_flat_folder_of_brats_2021_label_maps(tmp_path):
    prediction, reference = CASES[SHIFTED]
    prediction, reference = np.where(prediction == 3, 4, 0), np.where(reference == 3, 4, 0)
    save(prediction.astype(np.float32), tmp_path / "other_tool" / "case7.nii.gz")
    save(reference.astype(np.uint8), tmp_path / "labels" / "case7.nii.gz")

    assert evaluate(tmp_path / "other_tool", tmp_path / "labels") == 0

    [row] = read_rows(tmp_path / "other_tool" / "scores.csv")
    expected = case_scores(prediction, reference, "brats2021", SPACING)["ET"]
    assert row["case_id"] == "case7"
    assert (float(row["dice_et"]), float(row["hd95_et"])) == (expected.dice, expected.hd95)
    assert float(row["dice_et"]) == pytest.approx(2 / 3)


def test_a_reference_without_a_prediction_is_an_error_or_scored_as_the_worst_case(
    folders, tmp_path, capsys
):
    predictions, references = folders
    (predictions / f"{SHIFTED}_seg.nii.gz").unlink()

    assert evaluate(predictions, references) == 1
    error = capsys.readouterr().err
    assert str(references / SHIFTED / f"{SHIFTED}-seg.nii.gz") in error
    assert not (predictions / "scores.csv").exists()

    assert evaluate(predictions, references, "--allow-missing") == 0
    rows = {row["case_id"]: row for row in read_rows(predictions / "scores.csv")}
    missing = rows[SHIFTED]
    assert missing["prediction"] == "missing"
    for region in ("tc", "wt", "et"):
        assert (float(missing[f"dice_{region}"]), float(missing[f"hd95_{region}"])) == (
            0.0,
            WORST_HD95_MM,
        )
        assert float(missing[f"lesion_dice_{region}"]) == 0.0
        assert (missing[f"lesion_tp_{region}"], missing[f"lesion_fn_{region}"]) == ("0", "1")
    assert float(rows[HAND_WORKED]["lesion_dice_wt"]) == pytest.approx(1 / 3)


def test_a_prediction_without_a_reference_is_an_error_naming_it(folders, capsys):
    predictions, references = folders
    extra = save(CASES[SHIFTED][0], predictions / "BraTS-GLI-00003-000_seg.nii.gz")

    assert evaluate(predictions, references) == 1
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert str(extra) in error_lines[0] and "no reference" in error_lines[0]
    assert not (predictions / "scores.csv").exists()


@pytest.mark.parametrize(
    ("array", "affine", "named"),
    [
        (CASES[SHIFTED][0], np.diag([1.0, 1.0, 1.0, 1.0]), "affine"),
        (CASES[SHIFTED][0][:, :, :16], AFFINE, "shape"),
    ],
)
def test_a_prediction_on_another_grid_is_an_error_naming_it(folders, capsys, array, affine, named):
    predictions, references = folders
    moved = save(array, predictions / f"{SHIFTED}_seg.nii.gz", affine)

    assert evaluate(predictions, references) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(moved) in line and named in line


def test_label_values_of_another_release_are_an_error_naming_the_file(folders, capsys):
    predictions, references = folders
    prediction = save(CASES[HAND_WORKED][0] * 2, predictions / f"{HAND_WORKED}_seg.nii.gz")  # 4s

    assert evaluate(predictions, references, "--release", "brats2023") == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(prediction) in line and "[4]" in line
