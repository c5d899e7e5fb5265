"""Every kind of bad data, generated from a phantom: `resnext3d check-data` lists each with its
file in one run, and the data modules (so `fit`) refuse each with the file named."""

import csv
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from resnext3d.cli import main
from resnext3d.data import (
    BratsClassificationData,
    BratsSegmentationData,
    DataError,
    generate_phantom,
)

SHAPE = (32, 32, 24)
# Data modules that read nothing beyond the checks; half the 4 cases validate.
SETTINGS = {"cache": "none", "num_workers": 0, "val_fraction": 0.5}
CLASSIFICATION_CONFIG = Path(__file__).parents[1] / "experiments" / "brats_cls.yaml"


def case_file(root: Path, case_id: str, kind: str) -> Path:
    return root / case_id / f"{case_id}_{kind}.nii.gz"


def rewrite(path: Path, transform, dtype=None, affine=None) -> Path:
    """Save `transform` of the file's voxels (and `affine`) in place of the file."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    data = transform(data.astype(dtype) if dtype else data)
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), path)
    return path


def name_mapping_rows(root: Path) -> list[list[str]]:
    with (root / "name_mapping.csv").open(newline="") as file:
        return list(csv.reader(file))


def write_name_mapping(root: Path, rows: list[list[str]]) -> Path:
    with (root / "name_mapping.csv").open("w", newline="") as file:
        csv.writer(file).writerows(rows)
    return root / "name_mapping.csv"


def set_grade(root: Path, case_id: str, grade: str) -> Path:
    rows = name_mapping_rows(root)
    return write_name_mapping(root, [[grade, i] if i == case_id else [g, i] for g, i in rows])


# Each corruption damages one case of a phantom and returns the file that must be blamed.


def missing(root, case_id):
    path = case_file(root, case_id, "t1ce")
    path.unlink()
    return path


def zero_bytes(root, case_id):
    path = case_file(root, case_id, "t2")
    path.write_bytes(b"")
    return path


def truncated(root, case_id):
    path = case_file(root, case_id, "flair")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header survives
    return path


def not_nifti(root, case_id):
    path = case_file(root, case_id, "t1")
    path.write_bytes(b"<html>404 Not Found</html>" * 20)
    return path


def other_shape(root, case_id):
    return rewrite(case_file(root, case_id, "flair"), lambda d: np.pad(d, ((0, 8), (0, 0), (0, 0))))


def shifted(root, case_id):
    path = case_file(root, case_id, "t2")
    affine = nib.load(path).affine.copy()
    affine[:3, 3] += 5.0
    return rewrite(path, lambda d: d, affine=affine)


def reoriented(root, case_id):
    path = case_file(root, case_id, "t1ce")
    affine = nib.load(path).affine @ np.diag([-1.0, 1, 1, 1])  # the first axis points right
    affine[0, 3] = nib.load(path).affine[0, 3]
    return rewrite(path, lambda d: d[::-1].copy(), affine=affine)


def four_d(root, case_id):
    return rewrite(case_file(root, case_id, "t1"), lambda d: np.stack([d, d], axis=-1))


def two_d(root, case_id):
    return rewrite(case_file(root, case_id, "t2"), lambda d: d[:, :, SHAPE[2] // 2].copy())


def nan_voxels(root, case_id):
    def poison(data):
        data[10:12, 10:12, 10] = np.nan
        return data

    return rewrite(case_file(root, case_id, "flair"), poison, dtype=np.float32)


def infinite_voxels(root, case_id):
    def poison(data):
        data[5, 5, 5] = np.inf
        return data

    return rewrite(case_file(root, case_id, "t1"), poison, dtype=np.float32)


def zero_modality(root, case_id):
    return rewrite(case_file(root, case_id, "t1ce"), np.zeros_like)


def zero_case(root, case_id):
    for modality in ("flair", "t1", "t1ce", "t2"):
        rewrite(case_file(root, case_id, modality), np.zeros_like)
    return root / case_id


def foreign_label_values(root, case_id):
    def as_2023(data):  # BraTS 2023 labels enhancing tumour 3, not 4
        data[data == 4] = 3
        data[0, 0, 0] = 3
        return data

    return rewrite(case_file(root, case_id, "seg"), as_2023)


def seg_on_other_grid(root, case_id):
    return rewrite(case_file(root, case_id, "seg"), lambda d: d[:, :, :20].copy())


def missing_seg(root, case_id):
    case_file(root, case_id, "seg").unlink()
    return root / case_id


def label_without_case(root, case_id):
    write_name_mapping(root, [*name_mapping_rows(root), ["HGG", "BraTS2021_09999"]])
    return root / "name_mapping.csv"


def case_without_label(root, case_id):
    write_name_mapping(root, [row for row in name_mapping_rows(root) if row[1] != case_id])
    return root / case_id


def contradictory_labels(root, case_id):
    rows = name_mapping_rows(root)
    write_name_mapping(root, [*rows, ["LGG" if dict((i, g) for g, i in rows)[case_id] == "HGG"
                                      else "HGG", case_id]])  # fmt: skip
    return root / "name_mapping.csv"


def unknown_class(root, case_id):
    return set_grade(root, case_id, "GBM")


def lower_case_class(root, case_id):
    return set_grade(root, case_id, "lgg")


def one_class(root, case_id):
    path = root / "one_class.csv"
    cases = sorted(p.name for p in root.glob("BraTS2021_*"))
    path.write_text("Grade,BraTS_2020_subject_ID\n" + "".join(f"HGG,{c}\n" for c in cases))
    return path


def broken_link(root, case_id):
    """A case folder that is a link to a folder moved away."""
    folder = root / case_id
    shutil.rmtree(folder)
    folder.symlink_to(root.parent / "moved" / case_id, target_is_directory=True)
    return folder


def link_cycle(root, case_id):
    link = root / case_id / "all_cases"
    link.symlink_to(root, target_is_directory=True)
    return link


def two_files_for_a_modality(root, case_id):
    path = case_file(root, case_id, "t1")
    image = nib.load(path)
    nib.save(image, path.with_name(path.name.removesuffix(".gz")))  # an uncompressed copy
    return root / case_id


def other_release(root, case_id):
    """The case renamed and relabelled as a BraTS 2023 one (and its grade kept)."""
    new_id = case_id.replace("BraTS2021_", "BraTS-GLI-") + "-000"
    folder = (root / case_id).rename(root / new_id)
    suffixes_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
    for old, new in suffixes_2023.items():
        (folder / f"{case_id}_{old}.nii.gz").rename(folder / f"{new_id}-{new}.nii.gz")
    rows = name_mapping_rows(root)
    write_name_mapping(root, [[grade, new_id if i == case_id else i] for grade, i in rows])
    return folder


def nan_affine(root, case_id):
    """NaN in the header's sform, written as is (nibabel refuses to derive a qform from it)."""
    path = case_file(root, case_id, "flair")
    image = nib.load(path)
    header = image.header.copy()
    header["srow_x"][0] = np.nan
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, header=header), path)
    return path


def scaled_voxels(modality, spacing_mm):
    """The file's voxel size set to `spacing_mm`, as a header in cm or in 0.1 mm would have it."""

    def corrupt(root, case_id):
        path = case_file(root, case_id, modality)
        affine = nib.load(path).affine.copy()
        affine[:3, :3] *= spacing_mm / nib.affines.voxel_sizes(affine)
        return rewrite(path, lambda d: d, affine=affine)

    return corrupt


def zero_pixdim(root, case_id):
    """No affine in the header, and a voxel size of 0 mm along x, which nibabel reads as 1 mm."""
    path = case_file(root, case_id, "t1")
    image = nib.Nifti1Image(np.asanyarray(nib.load(path).dataobj), None)
    image.header["pixdim"][1:4] = [0.0, 2.4, 2.5]
    nib.save(image, path)
    return path


def few_slices(root, case_id):
    return rewrite(case_file(root, case_id, "t2"), lambda d: d[:, :, 10:12].copy())


def complex_voxels(root, case_id):
    return rewrite(case_file(root, case_id, "flair"), lambda d: d, dtype=np.complex64)


def rgb_voxels(root, case_id):
    def as_rgb(data):
        rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"] = rgb["G"] = rgb["B"] = np.clip(data, 0, 255)
        return rgb

    return rewrite(case_file(root, case_id, "t1ce"), as_rgb)


@dataclass(frozen=True)
class Kind:
    corrupt: object
    problem: str  # a regular expression the problem's message matches
    task: str = "classification"  # the data module that must refuse it
    severity: str = "error"
    quick: bool = True  # found by the quick check that runs by default before training
    # Found when the cases are discovered, so that fit stops there, before the files are checked.
    layout: bool = False


KINDS = {
    "missing file": Kind(missing, "missing file"),
    "zero-byte file": Kind(zero_bytes, r"empty file \(0 bytes\)"),
    "truncated file": Kind(truncated, "truncated or damaged"),
    "unreadable file": Kind(not_nifti, "unreadable NIfTI header"),
    "shape differs": Kind(other_shape, r"shape \(40, 32, 24\) differs from \(32, 32, 24\)"),
    "affine differs": Kind(shifted, "affine differs by up to 5 mm"),
    "orientation differs": Kind(reoriented, "orientation RPS differs from LPS"),
    "4-D image": Kind(four_d, "4-D image of shape .* where a 3-D one is expected"),
    "2-D image": Kind(two_d, "2-D image of shape .* where a 3-D one is expected"),
    "NaN voxels": Kind(nan_voxels, "4 NaN voxels", quick=False),
    "infinite voxels": Kind(infinite_voxels, "1 infinite voxel", quick=False),
    "all-zero modality": Kind(zero_modality, r"all voxels are zero \(t1ce\)", severity="warning",
                              quick=False),
    "all-zero case": Kind(zero_case, "every modality is all zero", quick=False),
    "foreign label values": Kind(foreign_label_values, r"label values \[3\] are not brats2021 "
                                 "labels .* fit brats2023", "segmentation", quick=False),
    "label map on another grid": Kind(seg_on_other_grid, r"label map shape \(32, 32, 20\) "
                                      r"differs from the images' \(32, 32, 24\)", "segmentation"),
    "missing label map": Kind(missing_seg, "no label map", "segmentation"),
    "label without a case": Kind(label_without_case, "BraTS2021_09999 is labelled but there is "
                                 "no such case"),
    "case without a label": Kind(case_without_label, "has no label in"),
    "contradictory labels": Kind(contradictory_labels, "labelled both"),
    "unknown class": Kind(unknown_class, "label 'GBM' is not a class"),
    "class name in lower case": Kind(lower_case_class, "label 'lgg' is not a class .* did you "
                                    "mean LGG"),
    "one class": Kind(one_class, "a classifier needs two classes or more"),
    "broken link": Kind(broken_link, r"symbolic link to .*moved.* is broken \(No such file",
                        layout=True),
    "link cycle": Kind(link_cycle, "symbolic link cycle: it leads to .*, a folder that contains "
                       "it", layout=True),
    "two files for a modality": Kind(two_files_for_a_modality, r"2 files for t1: \S+_t1\.nii, "
                                     r"\S+_t1\.nii\.gz; a case needs exactly one", layout=True),
    "other release": Kind(other_release, r"cases of several releases \(brats2021 \d+, brats2023 "
                          r"1\): the brats2023 cases \(BraTS-GLI-\d+-000\)", layout=True),
    "NaN in the affine": Kind(nan_affine, r"NaN or infinite values in the affine"),
    "voxels ten times too large": Kind(scaled_voxels("t1ce", 24.0), r"voxel size 24x24x24 mm is "
                                       "implausible for MRI"),
    "voxels ten times too small": Kind(scaled_voxels("t2", 0.1), r"voxel size 0.1x0.1x0.1 mm is "
                                       "implausible for MRI"),
    "zero pixdim": Kind(zero_pixdim, r"voxel size \(pixdim\) 0x2.4x2.5 in the header is zero"),
    "two slices": Kind(few_slices, r"shape \(32, 32, 2\) is not a volume: fewer than 8 voxels"),
    "complex voxels": Kind(complex_voxels, r"voxels of type complex64 where real numbers"),
    "RGB voxels": Kind(rgb_voxels, r"voxels of type RGB \(.*\) where real numbers"),
}  # fmt: skip


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    return generate_phantom(tmp_path_factory.mktemp("clean"), cases=4, shape=SHAPE)


def phantom_with_one_case_per_kind(root: Path, kinds: dict[str, Kind]):
    """A phantom with one case per kind of problem, the first left intact; the files blamed."""
    root = generate_phantom(root, cases=len(kinds) + 1, shape=SHAPE)
    blamed = {
        name: kind.corrupt(root, f"BraTS2021_{index:05d}")
        for index, (name, kind) in enumerate(kinds.items(), start=1)
    }
    return root, blamed


@pytest.fixture(scope="module")
def broken_phantom(tmp_path_factory):
    return phantom_with_one_case_per_kind(tmp_path_factory.mktemp("broken") / "data", KINDS)


@pytest.fixture(scope="module")
def broken_files_phantom(tmp_path_factory):
    """Only the kinds of problems found past discovery, where fit would stop first."""
    kinds = {name: kind for name, kind in KINDS.items() if not kind.layout}
    return phantom_with_one_case_per_kind(tmp_path_factory.mktemp("broken_files"), kinds)


def check_data(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", *map(str, args)])
    return exit_info.value.code, capsys.readouterr().out


def test_check_data_lists_every_kind_with_its_file_in_one_run(broken_phantom, capsys):
    root, blamed = broken_phantom
    labels = [root / "name_mapping.csv", root / "one_class.csv"]
    status, output = check_data(capsys, root, "--labels", *labels)
    assert status == 1
    rows = output.splitlines()
    for name, kind in KINDS.items():
        file = str(blamed[name].relative_to(root))
        # Without a task, a lost label map is suspicious, not fatal: classification needs none.
        severity = "warning" if name == "missing label map" else kind.severity
        matching = [
            row
            for row in rows
            if row.startswith(severity) and f" {file}" in row and _search(kind.problem, row)
        ]
        assert matching, f"{name}: no {severity} for {file} matching {kind.problem!r}"
    # The odd file out is blamed, not the other files of its case.
    assert not [row for row in rows if "BraTS2021_00005" in row and "flair" not in row]
    assert "classes (name_mapping.csv): LGG" in output
    assert "image shapes: 32x32x24" in output


def _search(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def test_check_data_accepts_the_phantom_and_summarises_it(small_phantom, capsys):
    status, output = check_data(capsys, small_phantom, "--task", "segmentation")
    assert status == 0
    assert "no problems found" in output
    for line in (
        "4 cases (brats2021 layout), 20 files",
        "voxel sizes (mm): 2.4x2.4x2.5 (20)",
        "orientations: LPS (20)",
        "label map values: 0, 1, 2, 4",
        "0 errors, 0 warnings",
    ):
        assert line in output  # fmt: skip
    assert "flair intensity: 0 to" in output


def test_a_task_checks_only_the_files_it_reads(small_phantom, tmp_path, capsys):
    root = shutil.copytree(small_phantom, tmp_path / "data")
    seg = case_file(root, "BraTS2021_00001", "seg")
    seg.write_bytes(b"")
    assert check_data(capsys, root, "--task", "classification")[0] == 0
    classification = BratsClassificationData(data_dir=str(root), check="full", **SETTINGS)
    classification.setup("fit")
    status, output = check_data(capsys, root, "--task", "segmentation")
    assert status == 1 and str(seg.relative_to(root)) in output
    with pytest.raises(DataError, match=f"{seg}: empty file"):
        BratsSegmentationData(data_dir=str(root), **SETTINGS).setup("fit")


@pytest.mark.parametrize("name", KINDS)
def test_training_refuses_each_kind_naming_the_file(name, small_phantom, tmp_path, caplog):
    kind = KINDS[name]
    root = shutil.copytree(small_phantom, tmp_path / "data")
    blamed = kind.corrupt(root, "BraTS2021_00001")
    module = BratsClassificationData if kind.task == "classification" else BratsSegmentationData
    extra = {"labels": str(blamed)} if name == "one class" else {}
    checks = ["quick", "full"] if kind.quick else ["full"]
    for check in checks:
        data = module(data_dir=str(root), check=check, **SETTINGS, **extra)
        if kind.severity == "warning":
            with caplog.at_level(logging.WARNING):
                data.setup("fit")
            assert str(blamed) in caplog.text and _search(kind.problem, caplog.text)
            continue
        with pytest.raises(DataError) as error:
            data.setup("fit")
        assert str(blamed) in str(error.value), check
        assert _search(kind.problem, str(error.value)), check


@pytest.mark.slow  # a fit in a process of its own
def test_fit_exits_1_naming_the_files(broken_files_phantom, tmp_path):
    root, blamed = broken_files_phantom
    # Labels without problems, so that the files are what stops the run.
    labels = tmp_path / "grades.csv"
    cases = sorted(p.name for p in root.glob("BraTS2021_*"))
    grades = [f"{'LGG' if int(c[-1]) % 2 else 'HGG'},{c}\n" for c in cases]
    labels.write_text("Grade,BraTS_2020_subject_ID\n" + "".join(grades))
    fit = subprocess.run(
        [sys.executable, "-m", "resnext3d", "fit", "--config", str(CLASSIFICATION_CONFIG),
         "--data.init_args.data_dir", str(root), "--data.init_args.check", "full",
         "--data.init_args.labels", str(labels),
         "--trainer.logger", "false", "--trainer.max_epochs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert fit.returncode == 1, fit.stderr[-3000:]
    for name in ("truncated file", "NaN voxels", "all-zero case", "shape differs"):
        assert str(blamed[name]) in fit.stderr, name


@pytest.mark.parametrize("name", [name for name, kind in KINDS.items()
                                  if not kind.quick and kind.severity == "error"
                                  and kind.task == "classification"])  # fmt: skip
def test_voxel_problems_past_the_quick_check_fail_named_when_read(name, small_phantom, tmp_path):
    """The quick check reads headers only; the memory cache reads every voxel at setup, where
    NaN, infinite or all-zero images stop the run with the file or case named."""
    root = shutil.copytree(small_phantom, tmp_path / "data")
    blamed = KINDS[name].corrupt(root, "BraTS2021_00001")
    data = BratsClassificationData(
        data_dir=str(root), roi_size=(32, 32, 32), **{**SETTINGS, "cache": "memory"}
    )
    with pytest.raises(DataError, match=re.escape(str(blamed))):
        data.setup("fit")
