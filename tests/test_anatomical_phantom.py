"""The anatomical BraTS phantom: reproducible, the releases' labels, tumours that sit in the brain,
push it aside and are surrounded by edema, varied cases, files the project reads, thick slices,
and the data module training on it. On 4 mm grids, to stay fast."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from resnext3d.data import anatomical
from resnext3d.data.anatomical import (
    anatomical_case,
    ensure_anatomical_phantom,
    generate_anatomical_phantom,
)
from resnext3d.data.checks import check_data_main
from resnext3d.data.layouts import find_cases
from resnext3d.data.phantom import COMPLETION_MARKER, phantom_main

SPACING = (4.0, 4.0, 4.0)
CASES = 8


@pytest.fixture(scope="module")
def cases():
    return [anatomical_case(0, index, spacing=SPACING) for index in range(CASES)]


def read(path):
    return np.asarray(nib.load(path).dataobj)


def test_a_case_depends_only_on_seed_and_index(cases):
    again = anatomical_case(0, 3, spacing=SPACING)
    assert again.images.tobytes() == cases[3].images.tobytes()
    assert again.label_map.tobytes() == cases[3].label_map.tobytes()
    other_seed = anatomical_case(1, 3, spacing=SPACING)
    assert not np.array_equal(other_seed.images, cases[3].images)
    assert not np.array_equal(cases[2].label_map, cases[3].label_map)


def test_labels_are_the_release_values(cases):
    for case in cases:
        assert set(np.unique(case.label_map)) <= {0, 1, 2, 4}
    assert any(4 in case.label_map for case in cases)
    brats2023 = anatomical_case(0, 0, release="brats2023", spacing=SPACING)
    assert set(np.unique(brats2023.label_map)) <= {0, 1, 2, 3}
    # The same tumour, labelled in the other release's values.
    expected = np.where(cases[0].label_map == 4, 3, cases[0].label_map)
    assert np.array_equal(brats2023.label_map, expected)


def test_tumours_are_in_the_brain_and_skull_stripped(cases):
    for case in cases:
        brain = case.images.any(0)
        assert case.label_map.any()
        assert brain[case.label_map > 0].all()  # every tumour voxel is imaged, in the brain
        # Exactly zero outside the brain, in every modality: the corners and most of the volume.
        assert (case.images[:, 0, 0, 0] == 0).all()
        assert 0.15 < brain.mean() < 0.6
        for centre in case.lesion_centres:
            assert brain[tuple(np.round(centre).astype(int))]


def test_enhancing_tumour_lies_in_the_core_and_edema_surrounds_it(cases):
    ring_fractions = []
    for case in cases:
        labels = case.label_map
        core = (labels == 1) | (labels == 4)
        enhancing = labels == 4
        if enhancing.any():
            # Enhancing voxels belong to a core: they touch necrosis or edema, not only healthy
            # brain, and lie within the core's bounding box.
            near_rest = ndimage.binary_dilation((labels == 1) | (labels == 2), iterations=2)
            assert near_rest[enhancing].mean() > 0.8
            low, high = np.argwhere(core).min(0), np.argwhere(core).max(0)
            assert (np.argwhere(enhancing) >= low).all() and (np.argwhere(enhancing) <= high).all()
        if (labels == 2).any():
            ring = ndimage.binary_dilation(core) & ~core & case.images.any(0)
            ring_fractions.append((labels[ring] == 2).mean())
            # Edema grows from the core: every piece of it touches the core.
            pieces, count = ndimage.label(labels == 2)
            grown = ndimage.binary_dilation(core, iterations=2)
            assert all(grown[pieces == piece].any() for piece in range(1, count + 1))
    assert len(ring_fractions) >= CASES // 2
    assert np.mean(ring_fractions) > 0.5


def test_mass_effect_pushes_nearby_tissue_aside():
    # Case 4: a large high-grade tumour, beside the same subject without it.
    with_tumour = anatomical_case(0, 4, spacing=SPACING)
    without = anatomical_case(0, 4, spacing=SPACING, tumour=False)
    assert not without.label_map.any()
    (centre,) = with_tumour.lesion_centres
    grid = np.indices(with_tumour.label_map.shape).transpose(1, 2, 3, 0)
    distance = np.linalg.norm((grid - centre) * SPACING, axis=-1)
    # Healthy tissue fractions, which the tumour's own tissue replaces where it lies.
    change = np.abs(with_tumour.tissue - without.tissue).sum(0)
    tumour = ndimage.binary_dilation(with_tumour.label_map > 0)
    near = (distance < 40) & ~tumour & (without.tissue.sum(0) > 0.5)
    far = distance > 80
    assert near.sum() > 100 and far.sum() > 1000
    assert change[near].mean() > 0.05
    assert change[far].max() < 0.01


def test_cases_differ_in_contrast_and_tumour_size(cases):
    volumes = [(case.label_map > 0).sum() for case in cases]
    assert max(volumes) > 4 * min(volumes)
    t1 = anatomical.MODALITIES.index("t1")
    grey_to_white = []
    for case in cases:
        healthy = case.label_map == 0
        grey = healthy & (case.tissue[0] > 0.7)
        white = healthy & (case.tissue[1] > 0.7)
        grey_to_white.append(case.images[t1][grey].mean() / case.images[t1][white].mean())
        assert grey_to_white[-1] < 0.95  # white matter brighter than grey on T1
    assert np.std(grey_to_white) > 0.02
    maxima = [case.images[0].max() for case in cases]
    assert max(maxima) > 1.5 * min(maxima)
    assert {case.grade for case in cases} == {"HGG", "LGG"}


@pytest.mark.parametrize(
    ("release", "case_id", "files"),
    [
        ("brats2021", "BraTS2021_00001", ("flair", "t1", "t1ce", "t2", "seg")),
        ("brats2023", "BraTS-GLI-00001-000", ("t2f", "t1n", "t1c", "t2w", "seg")),
    ],
)
def test_files_pass_the_data_check_in_either_release(tmp_path, capsys, release, case_id, files):
    root = generate_anatomical_phantom(
        tmp_path / release, cases=3, release=release, spacing=SPACING
    )
    separator = "_" if release == "brats2021" else "-"
    assert sorted(path.name for path in (root / case_id).iterdir()) == sorted(
        f"{case_id}{separator}{suffix}.nii.gz" for suffix in files
    )
    discovery = find_cases(root)
    assert [case.release for case in discovery.cases] == [release] * 3
    assert not discovery.problems
    assert check_data_main([str(root), "--task", "segmentation"]) == 0
    assert "no problems found" in capsys.readouterr().out
    with (root / "name_mapping.csv").open() as file:
        grades = {row["BraTS_2020_subject_ID"]: row["Grade"] for row in csv.DictReader(file)}
    assert list(grades.values()) == ["HGG", "LGG", "HGG"]
    assert case_id in grades
    # The files hold what anatomical_case draws.
    image = nib.load(root / case_id / f"{case_id}{separator}{files[2]}.nii.gz")
    assert image.header.get_zooms() == pytest.approx(SPACING)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    case = anatomical_case(0, 1, release=release, spacing=SPACING)
    assert np.array_equal(np.asarray(image.dataobj), case.images[2])


def test_thick_slices_keep_the_requested_grid_and_blur_along_it(cases, tmp_path):
    root = generate_anatomical_phantom(
        tmp_path / "thick", cases=1, spacing=(3.0, 3.0, 5.0), slice_thickness=5.0
    )
    flair = nib.load(root / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz")
    assert flair.header.get_zooms() == pytest.approx((3.0, 3.0, 5.0))
    assert flair.shape == (80, 80, 31)

    def through_plane_share(case):
        image = case.images[0].astype(float)
        inside = case.images[0][:, :, 1:] > 0
        along_z = np.abs(np.diff(image, axis=2))[inside & (case.images[0][:, :, :-1] > 0)]
        along_x = np.abs(np.diff(image, axis=0))
        return along_z.mean() / along_x[(case.images[0][1:] > 0) & (case.images[0][:-1] > 0)].mean()

    thin = cases[1]
    thick = anatomical_case(0, 1, spacing=SPACING, slice_thickness=10.0)
    assert thick.images.shape == thin.images.shape
    assert np.array_equal(thick.label_map, thin.label_map)
    assert through_plane_share(thick) < 0.8 * through_plane_share(thin)


def test_generated_again_only_when_the_parameters_change(tmp_path, monkeypatch):
    out_dir = ensure_anatomical_phantom(tmp_path / "phantom", cases=2, spacing=SPACING)
    marker = json.loads((out_dir / COMPLETION_MARKER).read_text())
    assert marker["realism"] == "anatomical"
    with monkeypatch.context() as patch:
        patch.setattr(anatomical, "generate_anatomical_phantom", pytest.fail)
        assert ensure_anatomical_phantom(out_dir, cases=2, spacing=SPACING) == out_dir
    ensure_anatomical_phantom(out_dir, cases=2, spacing=SPACING, release="brats2023")
    assert sorted(path.name for path in out_dir.glob("BraTS*")) == [
        "BraTS-GLI-00000-000",
        "BraTS-GLI-00001-000",
    ]


def test_command_line(tmp_path, capsys):
    out_dir = tmp_path / "cli"
    argv = [str(out_dir), "--realism", "anatomical", "--cases", "2", "--spacing", "4", "4", "4"]
    assert phantom_main([*argv, "--release", "brats2023", "--slice-thickness", "6"]) == 0
    assert "2 anatomical BraTS phantom cases (brats2023" in capsys.readouterr().out
    assert json.loads((out_dir / COMPLETION_MARKER).read_text())["slice_thickness"] == 6.0
    with pytest.raises(SystemExit):
        phantom_main([str(tmp_path / "simple"), "--release", "brats2023"])


def test_without_nilearn_it_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(anatomical.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"resnext3d\[anatomy\]"):
        generate_anatomical_phantom(tmp_path / "none", cases=1, spacing=SPACING)
    assert not (tmp_path / "none").exists()


@pytest.mark.slow  # generates a phantom and fits on it
def test_the_data_module_trains_a_step_on_it(in_tmp_dir):
    from lightning import Trainer

    from resnext3d import ResNeXtUNet, create_model
    from resnext3d.data import BratsSegmentationData
    from resnext3d.data.datamodule import PHANTOM_DIR
    from resnext3d.tasks import VolumeSegmenter

    data = BratsSegmentationData(
        phantom_realism="anatomical",
        phantom_cases=4,
        roi_size=(32, 32, 32),
        spacing=(4.0, 4.0, 4.0),
        batch_size=2,
        samples_per_case=1,
        num_workers=0,
        val_fraction=0.5,
    )
    assert data._phantom_dir() == PHANTOM_DIR.with_name("phantom_brats_anatomical")
    encoder = create_model("resnext14_tiny", in_channels=4, features_only=True)
    network = ResNeXtUNet(encoder, decoder_channels=(64, 32, 16, 16, 8))
    model = VolumeSegmenter(network, sliding_window_size=(32, 32, 32))
    trainer = Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 1
    root = in_tmp_dir / PHANTOM_DIR.with_name("phantom_brats_anatomical")
    assert json.loads((root / COMPLETION_MARKER).read_text())["realism"] == "anatomical"
    assert len(list(root.glob("BraTS2021_*"))) == 4
