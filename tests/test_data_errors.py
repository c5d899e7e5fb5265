"""Data that used to be dropped, misread or buried in a traceback: symbolic links, folders that
cannot be listed, label maps without any tumour, (X, Y, Z, 1) volumes and a file that fails only
when a worker loads it."""

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from resnext3d.cli import main
from resnext3d.data import (
    BratsSegmentationData,
    DataError,
    LoadModalitiesd,
    check_files_or_raise,
    discover_cases,
)
from resnext3d.data.layouts import find_cases

CLASSIFICATION = str(Path(__file__).parents[1] / "experiments" / "brats_cls.yaml")
SETTINGS = {"cache": "none", "num_workers": 0, "val_fraction": 0.5}
MODALITIES = ("flair", "t1", "t1ce", "t2")


def case_file(root: Path, case_id: str, kind: str) -> Path:
    return root / case_id / f"{case_id}_{kind}.nii.gz"


def rewrite(path: Path, transform) -> Path:
    image = nib.load(path)
    nib.save(nib.Nifti1Image(transform(np.asanyarray(image.dataobj)), image.affine), path)
    return path


@pytest.fixture
def phantom(tiny_phantom, tmp_path) -> Path:
    return shutil.copytree(tiny_phantom, tmp_path / "data")


def test_a_case_folder_linked_from_elsewhere_is_a_case(phantom, tmp_path):
    elsewhere = shutil.move(phantom / "BraTS2021_00003", tmp_path / "elsewhere")
    (phantom / "BraTS2021_00003").symlink_to(elsewhere, target_is_directory=True)
    cases = discover_cases(phantom)
    assert len(cases) == 8 and cases[3].case_id == "BraTS2021_00003"
    BratsSegmentationData(data_dir=str(phantom), **SETTINGS).setup("fit")


def test_a_link_to_itself_is_named(phantom):
    loop = phantom / "BraTS2021_00008"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=f"{loop}: symbolic link to .* is broken \\(Too many"):
        discover_cases(phantom)


def test_a_folder_that_cannot_be_listed_is_named(phantom, monkeypatch, capsys):
    """Tests run as root, whom permissions do not stop: the listing is refused as it would be
    for a user without read permission on the folder."""
    refused = phantom / "BraTS2021_00002"
    scandir = os.scandir

    def refusing_scandir(path="."):
        if os.fspath(path) == str(refused):
            raise PermissionError(13, "Permission denied", str(refused))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    with pytest.raises(DataError, match=f"{refused}: cannot list the folder \\(Permission denied"):
        discover_cases(phantom)
    with pytest.raises(SystemExit):
        main(["check-data", str(phantom), "--task", "segmentation"])
    assert "BraTS2021_00002  cannot list the folder (Permission denied)" in capsys.readouterr().out


def test_releases_mixed_are_counted_with_examples_of_the_fewer(phantom):
    for case_id in ("BraTS2021_00001", "BraTS2021_00006"):
        new_id = case_id.replace("BraTS2021_", "BraTS-GLI-") + "-000"
        folder = (phantom / case_id).rename(phantom / new_id)
        for old, new in zip((*MODALITIES, "seg"), ("t2f", "t1n", "t1c", "t2w", "seg"), strict=True):
            (folder / f"{case_id}_{old}.nii.gz").rename(folder / f"{new_id}-{new}.nii.gz")
    (problem,) = find_cases(phantom).problems
    assert problem.path == str(phantom / "BraTS-GLI-00001-000")
    assert problem.message.startswith(
        "cases of several releases (brats2021 6, brats2023 2): the brats2023 cases "
        "(BraTS-GLI-00001-000, BraTS-GLI-00006-000) name their files and label values unlike"
    )


@pytest.mark.parametrize("check", ["quick", "full"])
def test_segmentation_needs_a_tumour_in_some_label_map(phantom, check, capsys):
    seg_paths = sorted(phantom.glob("*/*_seg.nii.gz"))
    rewrite(seg_paths[0], np.zeros_like)  # one case without tumour is fine
    BratsSegmentationData(data_dir=str(phantom), check=check, **SETTINGS).setup("fit")
    for path in seg_paths[1:]:
        rewrite(path, np.zeros_like)
    with pytest.raises(DataError, match=f"{phantom}: no case has a tumour label: all 8 label"):
        BratsSegmentationData(data_dir=str(phantom), check=check, **SETTINGS).setup("fit")
    with pytest.raises(SystemExit):
        main(["check-data", str(phantom), "--task", "segmentation"])
    assert "no case has a tumour label" in capsys.readouterr().out


def test_a_volume_with_a_trailing_singleton_axis_is_3d(phantom, capsys):
    case_id = "BraTS2021_00004"
    paths = [case_file(phantom, case_id, kind) for kind in (*MODALITIES, "seg")]
    for path in paths:
        rewrite(path, lambda data: data[..., None])
    assert nib.load(paths[0]).shape == (32, 32, 24, 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(phantom), "--task", "segmentation"])
    assert exit_info.value.code == 0, capsys.readouterr().out
    loaded = LoadModalitiesd(["image", "label"])(
        {"image": [str(path) for path in paths[:4]], "label": str(paths[4])}
    )
    assert loaded["image"].shape == (4, 32, 32, 24) and loaded["label"].shape == (1, 32, 32, 24)


def test_a_negative_pixdim_is_named(phantom):
    path = case_file(phantom, "BraTS2021_00005", "t2")
    image = nib.Nifti1Image(np.asanyarray(nib.load(path).dataobj), None)
    image.header["pixdim"][1:4] = [2.4, -2.4, 2.5]
    nib.save(image, path)
    with pytest.raises(DataError, match=f"{path}: voxel size \\(pixdim\\) 2.4x-2.4x2.5 in the"):
        check_files_or_raise(discover_cases(phantom))


def damage_inside_the_stream(path: Path) -> Path:
    """Flip bytes in the middle of the compressed stream: size and gzip trailer stay, so the
    quick check passes the file and loading it fails."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - byte for byte in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("cache", ["none", "disk"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_fails_when_loaded_exits_1_naming_it(
    tiny_phantom, in_tmp_dir, capsys, cache, workers
):
    root = shutil.copytree(tiny_phantom, in_tmp_dir / "data")
    # Every case, so that the first batch, whichever it is, fails.
    damaged = [damage_inside_the_stream(path) for path in sorted(root.glob("*/*_t1ce.nii.gz"))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CLASSIFICATION,
              "--model.init_args.network.init_args.preset", "resnext14_tiny",
              "--data.init_args.data_dir", str(root), "--data.init_args.roi_size", "[16, 16, 16]",
              "--data.init_args.batch_size", "2", "--data.init_args.cache", cache,
              "--data.init_args.cache_dir", str(in_tmp_dir / "cache"),
              "--data.init_args.num_workers", str(workers),
              "--trainer.max_epochs", "1"])  # fmt: skip
    assert exit_info.value.code == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("resnext3d fit: error: "), last_line
    assert any(f"{path}: cannot read the image data" in last_line for path in damaged), last_line
