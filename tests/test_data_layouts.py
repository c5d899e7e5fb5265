"""Discovering each BraTS layout, its channel order after the transforms, and the file checks."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from resnext3d.data import DataError, check_files_or_raise, deterministic_transforms, discover_cases

SHAPE = (16, 8, 8)
SPACING = (2.0, 2.0, 2.0)
# BraTS voxel axes run to the left, posterior and superior: x and y flipped against RAS.
LPS_AFFINE = np.diag([-2.0, -2.0, 2.0, 1.0])
# Each release's file suffix of FLAIR, T1, T1ce and T2: the order the channels must come out in.
SUFFIXES = {"brats2021": ("flair", "t1", "t1ce", "t2"), "brats2023": ("t2f", "t1n", "t1c", "t2w")}


def channel_volume(channel, shape=SHAPE):
    """A volume that is non-zero only in slab `channel` of four along the first axis; the values
    vary, so that they survive intensity normalisation."""
    volume = np.zeros(shape, dtype=np.int16)
    slab = shape[0] // 4
    volume[channel * slab : (channel + 1) * slab] = (
        100 * (channel + 1) + np.arange(shape[1])[:, None]
    )
    return volume


def write_nifti(path, volume, affine=LPS_AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def write_brats_case(folder, case_id, release="brats2021"):
    """A case with channel_volume(k) in the file of modality k, written in scrambled order."""
    separator = "_" if release == "brats2021" else "-"
    for channel in (2, 0, 3, 1):
        suffix = SUFFIXES[release][channel]
        write_nifti(
            folder / case_id / f"{case_id}{separator}{suffix}.nii.gz", channel_volume(channel)
        )
    write_nifti(folder / case_id / f"{case_id}{separator}seg.nii.gz", np.zeros(SHAPE, np.uint8))
    return folder / case_id


def write_decathlon(root, case_ids):
    training = []
    for case_id in case_ids:
        image = np.stack([channel_volume(channel) for channel in range(4)], axis=-1)
        write_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", np.zeros(SHAPE, np.uint8))
        training.append(
            {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}
        )
    (root / "dataset.json").write_text(json.dumps({"name": "BRATS", "training": training}))
    # macOS archives ship "._" copies that are not NIfTI: dataset.json must be what is read.
    (root / "imagesTr" / f"._{case_ids[0]}.nii.gz").write_bytes(b"\0" * 10)


def write_layout(root, layout):
    """Two cases in `layout`; return their ids, in sorted order."""
    if layout == "brats2019":
        write_brats_case(root / "HGG", "BraTS19_TCIA01_131_1")
        write_brats_case(root / "LGG", "BraTS19_2013_0_1")
        return ["BraTS19_2013_0_1", "BraTS19_TCIA01_131_1"]
    if layout == "brats2021":
        for case_id in ("BraTS2021_00002", "BraTS2021_00000"):
            write_brats_case(root, case_id)
        return ["BraTS2021_00000", "BraTS2021_00002"]
    if layout == "brats2023":
        for case_id in ("BraTS-GLI-00005-001", "BraTS-GLI-00005-000"):
            write_brats_case(root, case_id, release="brats2023")
        return ["BraTS-GLI-00005-000", "BraTS-GLI-00005-001"]
    write_decathlon(root, ["BRATS_002", "BRATS_001"])
    return ["BRATS_001", "BRATS_002"]


@pytest.mark.parametrize("layout", ["brats2019", "brats2021", "brats2023", "decathlon"])
def test_each_layout_is_discovered(tmp_path, layout):
    case_ids = write_layout(tmp_path, layout)
    cases = discover_cases(tmp_path)
    assert [case.case_id for case in cases] == case_ids
    assert {case.release for case in cases} == {"brats2021" if layout == "brats2019" else layout}
    assert all(case.label_map is not None and case.label_map.is_file() for case in cases)
    assert [len(case.images) for case in cases] == [1 if layout == "decathlon" else 4] * 2
    grades = [case.grade for case in cases]
    assert grades == (["LGG", "HGG"] if layout == "brats2019" else [None, None])
    check_files_or_raise(cases)


@pytest.mark.parametrize("layout", ["brats2019", "brats2021", "brats2023", "decathlon"])
def test_channels_come_out_flair_t1_t1ce_t2_in_ras(tmp_path, layout):
    write_layout(tmp_path, layout)
    case = discover_cases(tmp_path)[0]
    item = deterministic_transforms(roi_size=SHAPE, spacing=SPACING)(
        {"image": [str(path) for path in case.images], "label": 1, "case_id": case.case_id}
    )
    image = item["image"]
    assert image.shape == (4, *SHAPE)
    slab = SHAPE[0] // 4
    for channel in range(4):
        occupied = image[channel].abs().sum(dim=(1, 2)).nonzero().flatten().tolist()
        # Reorienting to RAS flips the first (left-pointing) axis, so slab k ends up 3 - k.
        assert occupied == list(range((3 - channel) * slab, (4 - channel) * slab)), channel
    assert item["label"].dtype == torch.long
    assert item["case_id"] == case.case_id


def test_missing_modality_is_named(tmp_path):
    case_dir = write_brats_case(tmp_path, "BraTS2021_00000")
    (case_dir / "BraTS2021_00000_t1ce.nii.gz").unlink()
    cases = discover_cases(tmp_path)
    with pytest.raises(DataError, match=r"BraTS2021_00000_t1ce\.nii\.gz: missing file"):
        check_files_or_raise(cases)


def test_unreadable_header_is_named(tmp_path):
    case_dir = write_brats_case(tmp_path, "BraTS2021_00000")
    (case_dir / "BraTS2021_00000_t2.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"BraTS2021_00000_t2\.nii\.gz: unreadable NIfTI header"):
        check_files_or_raise(discover_cases(tmp_path))


def test_truncated_file_is_named_by_the_check_and_when_its_data_is_read(tmp_path):
    case_dir = write_brats_case(tmp_path, "BraTS2021_00000")
    # Noise does not compress, so cutting the file in half leaves its header but not its voxels.
    noise = np.random.default_rng(0).integers(0, 1000, SHAPE, dtype=np.int16)
    path = write_nifti(case_dir / "BraTS2021_00000_flair.nii.gz", noise)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cases = discover_cases(tmp_path)
    # The gzip trailer no longer matches the header's size: the quick check reads and names it.
    with pytest.raises(DataError, match=r"BraTS2021_00000_flair\.nii\.gz: truncated or damaged"):
        check_files_or_raise(cases)
    load = deterministic_transforms(roi_size=SHAPE).transforms[0]
    with pytest.raises(DataError, match=r"BraTS2021_00000_flair\.nii\.gz: cannot read"):
        load({"image": [str(path) for path in cases[0].images]})


def test_shape_mismatch_is_named(tmp_path):
    case_dir = write_brats_case(tmp_path, "BraTS2021_00000")
    write_nifti(case_dir / "BraTS2021_00000_t2.nii.gz", np.zeros((16, 8, 6), np.int16))
    with pytest.raises(DataError, match=r"BraTS2021_00000_t2\.nii\.gz: shape \(16, 8, 6\) differs"):
        check_files_or_raise(discover_cases(tmp_path))


def test_misregistered_modality_is_named(tmp_path):
    case_dir = write_brats_case(tmp_path, "BraTS2021_00000")
    shifted = LPS_AFFINE.copy()
    shifted[:3, 3] = 5.0
    write_nifti(case_dir / "BraTS2021_00000_t1.nii.gz", channel_volume(1), affine=shifted)
    with pytest.raises(DataError, match=r"BraTS2021_00000_t1\.nii\.gz: affine differs"):
        check_files_or_raise(discover_cases(tmp_path))


def test_decathlon_image_needs_four_channels(tmp_path):
    write_decathlon(tmp_path, ["BRATS_001"])
    write_nifti(tmp_path / "imagesTr" / "BRATS_001.nii.gz", np.zeros((*SHAPE, 3), np.int16))
    with pytest.raises(DataError, match=r"BRATS_001\.nii\.gz: shape .* expected 4 channels"):
        check_files_or_raise(discover_cases(tmp_path))


def test_all_problems_are_reported_together(tmp_path):
    for index in range(3):
        write_brats_case(tmp_path, f"BraTS2021_0000{index}")
    (tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz").unlink()
    (tmp_path / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz").write_bytes(b"")
    with pytest.raises(DataError) as error:
        check_files_or_raise(discover_cases(tmp_path))
    message = str(error.value)
    assert "(2 problems)" in message
    assert "BraTS2021_00000_t1.nii.gz: missing file" in message
    assert "BraTS2021_00002_seg.nii.gz: empty file (0 bytes)" in message


def test_empty_or_foreign_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: no BraTS cases found"):
        discover_cases(tmp_path)
    write_nifti(tmp_path / "scans" / "head.nii.gz", np.zeros(SHAPE, np.int16))
    (tmp_path / "notes.txt").write_text("not BraTS")
    with pytest.raises(DataError, match=f"{tmp_path}: no BraTS cases found"):
        discover_cases(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        discover_cases(tmp_path / "absent")


def test_case_in_two_folders_is_named(tmp_path):
    write_brats_case(tmp_path / "HGG", "BraTS2021_00000")
    write_brats_case(tmp_path / "copy", "BraTS2021_00000")
    with pytest.raises(DataError, match="case BraTS2021_00000 is in several folders"):
        discover_cases(tmp_path)


def test_decathlon_paths_are_relative_to_the_index(tmp_path):
    write_decathlon(tmp_path, ["BRATS_001", "BRATS_002"])
    index = json.loads((tmp_path / "dataset.json").read_text())
    del index["training"][1]["label"]  # a case without a label map
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    first, second = discover_cases(tmp_path)
    assert first.images == (tmp_path / "imagesTr" / "BRATS_001.nii.gz",)
    assert first.label_map == tmp_path / "labelsTr" / "BRATS_001.nii.gz"
    assert second.label_map is None


@pytest.mark.parametrize(
    "index",
    ['{"name": "BRATS"}', "{not json", '{"training": ["imagesTr/BRATS_001.nii.gz"]}'],
    ids=["no training list", "not JSON", "entry not a dict"],
)
def test_unreadable_decathlon_index_is_named(tmp_path, index):
    (tmp_path / "dataset.json").write_text(index)
    with pytest.raises(DataError, match=r"dataset\.json: cannot read its 'training' list"):
        discover_cases(tmp_path)


def test_uncompressed_brats_2020_files(tmp_path):
    for channel, suffix in enumerate(SUFFIXES["brats2021"][:3]):  # no T2
        write_nifti(
            tmp_path / "BraTS20_Training_001" / f"BraTS20_Training_001_{suffix}.nii",
            channel_volume(channel),
        )
    (case,) = discover_cases(tmp_path)
    assert case.case_id == "BraTS20_Training_001"
    assert case.label_map is None
    # The missing modality gets the path the naming scheme expects, for the error to name.
    assert case.images[3] == tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii"
    with pytest.raises(DataError, match=r"BraTS20_Training_001_t2\.nii: missing file"):
        check_files_or_raise([case])
