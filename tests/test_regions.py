import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged

from resnext3d.data.errors import DataError
from resnext3d.data.regions import (
    ConvertBratsRegionsToLabelsd,
    ConvertToBratsRegionsd,
    labels_to_regions,
    regions_to_labels,
)
from resnext3d.data.releases import RELEASES
from resnext3d.data.transforms import data_errors_unwrapped

# One voxel of each label value, in the order background, core, edema, enhancing.
HAND_MADE = {
    "brats2021": [0, 1, 2, 4],
    "brats2023": [0, 1, 2, 3],
    "decathlon": [0, 2, 1, 3],
}
# The TC, WT, ET channels of those four voxels: the same tissues in every release.
EXPECTED_REGIONS = [
    [0, 1, 0, 1],  # TC: core and enhancing
    [0, 1, 1, 1],  # WT: every tumour label
    [0, 0, 0, 1],  # ET: enhancing only
]


def random_label_map(release, shape=(1, 6, 7, 8), seed=0):
    values = np.array(RELEASES[release].labels.values)
    return np.random.default_rng(seed).choice(values, size=shape).astype(np.int16)


@pytest.mark.parametrize("release", RELEASES)
def test_hand_made_label_map_gives_exact_regions(release):
    label_map = np.array(HAND_MADE[release]).reshape(2, 2)  # spatial only, no channel axis
    regions = labels_to_regions(label_map, release)
    assert regions.dtype == np.float32
    np.testing.assert_array_equal(regions, np.array(EXPECTED_REGIONS).reshape(3, 2, 2))


def test_decathlon_edema_is_not_tumour_core():
    # MONAI's Decathlon tutorial counts label 1 as core; in Task01 it is edema.
    regions = labels_to_regions(np.array([[1]]), "decathlon")
    assert regions[:, 0].ravel().tolist() == [0, 1, 0]


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("to_type", [np.asarray, torch.as_tensor, MetaTensor])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_every_value_gives_the_regions_of_its_tissue(release, to_type, dtype):
    labels = RELEASES[release].labels
    label_map = random_label_map(release, seed=1)
    assert set(np.unique(label_map)) == set(labels.values)
    expected = np.stack(
        [
            np.isin(label_map[0], [labels.core, labels.enhancing]),
            np.isin(label_map[0], [labels.core, labels.edema, labels.enhancing]),
            label_map[0] == labels.enhancing,
        ]
    )
    regions = labels_to_regions(to_type(label_map), release, dtype=dtype)
    assert type(regions) is type(to_type(label_map))
    assert regions.dtype in (dtype, np.dtype(str(dtype).removeprefix("torch.")))
    np.testing.assert_array_equal(np.asarray(regions), expected.astype(np.uint8))


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("to_type", [np.asarray, torch.as_tensor])
def test_regions_are_nested_and_round_trip_to_the_label_map(release, to_type):
    label_map = to_type(random_label_map(release))
    regions = labels_to_regions(label_map, release)
    assert type(regions) is type(label_map)
    assert regions.shape == (3, *label_map.shape[1:])
    tc, wt, et = (regions[i] > 0 for i in range(3))
    assert (et <= tc).all() and (tc <= wt).all()
    assert et.any() and (tc & ~et).any() and (wt & ~tc).any()

    restored = regions_to_labels(regions, release)
    assert restored.dtype in (np.uint8, torch.uint8)
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(label_map))


@pytest.mark.parametrize("release", RELEASES)
def test_inverse_reads_predictions_as_nested(release):
    labels = RELEASES[release].labels
    # Probabilities of TC, WT, ET for five voxels.
    probabilities = np.array(
        [
            [0.9, 0.1, 0.9, 0.9, 0.2],
            [0.4, 0.8, 0.6, 0.5, 0.9],
            [0.9, 0.9, 0.2, 0.7, 0.9],
        ],
        dtype=np.float32,
    )
    expected = [0, labels.edema, labels.core, labels.enhancing, labels.edema]
    assert regions_to_labels(probabilities, release).tolist() == [expected]
    # A higher threshold drops the voxel at exactly 0.5.
    expected[3] = 0
    assert regions_to_labels(probabilities, release, threshold=0.55).tolist() == [expected]


@pytest.mark.parametrize(("release", "bad"), [("brats2021", 3), ("brats2023", 4), ("decathlon", 4)])
def test_unknown_label_values_are_rejected_with_the_filename(release, bad):
    label_map = np.array([[0, 1, 2, bad]])
    with pytest.raises(DataError, match=rf"case_7_seg\.nii\.gz: label values \[{bad}\]"):
        labels_to_regions(label_map, release, filename="case_7_seg.nii.gz")


def test_fractional_labels_from_linear_resampling_are_rejected():
    with pytest.raises(DataError, match=r"label values \[1\.5\] are not brats2021 labels"):
        labels_to_regions(np.array([[0.0, 1.0, 1.5, 2.0]]), "brats2021")


def test_map_transform_names_the_loaded_file_and_keeps_metadata(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = tmp_path / "BraTS2021_00007_seg.nii.gz"
    nib.save(nib.Nifti1Image(random_label_map("brats2023", shape=(6, 7, 8)), affine), path)
    load = LoadImaged("label", ensure_channel_first=True, image_only=True)

    regions = Compose([load, ConvertToBratsRegionsd("label", "brats2023", dtype=torch.uint8)])(
        {"label": path}
    )["label"]
    assert isinstance(regions, MetaTensor) and regions.dtype == torch.uint8
    assert regions.shape == (3, 6, 7, 8)
    np.testing.assert_allclose(regions.affine.numpy(), affine)

    # Read as BraTS 2021, the file holds 3s (MONAI wraps the DataError in a RuntimeError).
    with (
        pytest.raises(DataError, match=r"BraTS2021_00007_seg\.nii\.gz: label values \[3"),
        data_errors_unwrapped(),
    ):
        Compose([load, ConvertToBratsRegionsd("label", "brats2021")])({"label": path})


def test_inverse_map_transform_writes_release_values():
    regions = torch.tensor(EXPECTED_REGIONS, dtype=torch.float32)[:, None]
    item = ConvertBratsRegionsToLabelsd("pred", "brats2021")({"pred": regions})
    assert item["pred"].tolist() == [[[0, 1, 2, 4]]]


def test_unknown_release_and_wrong_channel_count_are_rejected():
    with pytest.raises(ValueError, match="brats2021"):
        ConvertToBratsRegionsd("label", "brats2020")
    with pytest.raises(ValueError, match="3 channels"):
        regions_to_labels(np.zeros((2, 4, 4)), "brats2021")
