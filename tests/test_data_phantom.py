"""The BraTS phantom: layout, determinism, tumour labels and contrasts, idempotent generation."""

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from resnext3d.data import DataError, phantom
from resnext3d.data.layouts import MODALITIES
from resnext3d.data.phantom import (
    COMPLETION_MARKER,
    ensure_phantom,
    generate_phantom,
    phantom_affine,
    phantom_main,
)

SHAPE = (32, 32, 24)
SPACING = (2.4, 2.4, 2.5)
CASES = 8  # the session's tiny_phantom (tests/conftest.py): seed 0, SHAPE


def read_case(root, index):
    """The four modalities (MODALITIES order) and the label map of case `index`, as arrays."""
    case_id = f"BraTS2021_{index:05d}"
    files = [root / case_id / f"{case_id}_{kind}.nii.gz" for kind in (*MODALITIES, "seg")]
    *images, label_map = (np.asarray(nib.load(path).dataobj) for path in files)
    return np.stack(images), label_map


def read_grades(root):
    with (root / "name_mapping.csv").open() as file:
        return {row["BraTS_2020_subject_ID"]: row["Grade"] for row in csv.DictReader(file)}


def test_writes_the_brats_2021_layout_with_a_real_affine(tiny_phantom):
    case_dir = tiny_phantom / "BraTS2021_00003"
    assert sorted(path.name for path in case_dir.iterdir()) == sorted(
        f"BraTS2021_00003_{kind}.nii.gz" for kind in ("flair", "t1", "t1ce", "t2", "seg")
    )
    image = nib.load(case_dir / "BraTS2021_00003_t1ce.nii.gz")
    label_map = nib.load(case_dir / "BraTS2021_00003_seg.nii.gz")
    assert image.shape == SHAPE
    assert image.get_data_dtype() == np.int16
    assert label_map.get_data_dtype() == np.uint8
    assert image.header.get_zooms() == pytest.approx(SPACING)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.allclose(image.affine, phantom_affine(SHAPE, SPACING))
    assert np.allclose(label_map.affine, image.affine)
    assert not np.allclose(image.affine[:3, 3], 0)


def test_grades_alternate_and_match_the_label_maps(tiny_phantom):
    grades = read_grades(tiny_phantom)
    assert list(grades.values()) == ["HGG", "LGG"] * (CASES // 2)
    for index, (case_id, grade) in enumerate(grades.items()):
        assert case_id == f"BraTS2021_{index:05d}"
        present = set(np.unique(read_case(tiny_phantom, index)[1]))
        if grade == "HGG":
            assert present == {0, 1, 2, 4}, case_id
        else:
            assert present == {0, 1, 2}, case_id


def test_tumour_tissues_have_the_brats_contrasts(tiny_phantom):
    flair, t1ce = MODALITIES.index("flair"), MODALITIES.index("t1ce")
    for index in range(CASES):
        images, label_map = read_case(tiny_phantom, index)
        healthy = (label_map == 0) & (images[flair] > 0)
        assert images[flair][label_map == 2].mean() > 1.3 * images[flair][healthy].mean()
        if index % 2 == 0:  # HGG: the rim enhances, the necrotic core it surrounds does not
            rim = images[t1ce][label_map == 4].mean()
            assert rim > 1.3 * images[t1ce][healthy].mean()
            assert rim > 1.2 * images[t1ce][label_map == 1].mean()
        else:  # LGG: the core does not enhance
            assert images[t1ce][label_map == 1].mean() < images[t1ce][healthy].mean()


def test_background_is_zero_and_head_is_noisy(tiny_phantom):
    images, _ = read_case(tiny_phantom, 0)
    assert (images[:, 0, 0, 0] == 0).all()
    head = images[0] > 0
    assert 0.2 < head.mean() < 0.8
    assert len(np.unique(images[0][head])) > 50


def test_same_seed_gives_identical_cases_and_another_seed_other_cases(tiny_phantom, tmp_path):
    again = generate_phantom(tmp_path / "again", cases=2, seed=0, shape=SHAPE)
    other = generate_phantom(tmp_path / "other", cases=2, seed=1, shape=SHAPE)
    for index in range(2):
        images, label_map = read_case(tiny_phantom, index)
        images_again, label_map_again = read_case(again, index)
        assert np.array_equal(images, images_again)
        assert np.array_equal(label_map, label_map_again)
        assert not np.array_equal(images, read_case(other, index)[0])


def test_ensure_phantom_generates_once_per_parameters(tmp_path, monkeypatch):
    out_dir = ensure_phantom(tmp_path / "phantom", cases=4, seed=0, shape=(16, 16, 12))
    assert (out_dir / COMPLETION_MARKER).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("generated again")

    with monkeypatch.context() as patch:
        patch.setattr(phantom, "generate_phantom", fail)
        assert ensure_phantom(out_dir, cases=4, seed=0, shape=(16, 16, 12)) == out_dir

    ensure_phantom(out_dir, cases=2, seed=0, shape=(16, 16, 12))
    assert sorted(path.name for path in out_dir.glob("BraTS2021_*")) == [
        "BraTS2021_00000",
        "BraTS2021_00001",
    ]
    assert len(read_grades(out_dir)) == 2


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    saves = 0
    save_nifti = phantom.save_nifti

    def interrupted_save(*args):
        nonlocal saves
        saves += 1
        if saves > 7:
            raise KeyboardInterrupt
        save_nifti(*args)

    out_dir = tmp_path / "phantom"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(phantom, "save_nifti", interrupted_save)
        ensure_phantom(out_dir, cases=4, seed=0, shape=(16, 16, 12))
    assert not out_dir.exists()
    assert list(tmp_path.iterdir()) == []

    ensure_phantom(out_dir, cases=4, seed=0, shape=(16, 16, 12))
    assert len(list(out_dir.glob("BraTS2021_*/*.nii.gz"))) == 4 * 5


def test_ensure_phantom_leaves_other_folders_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a phantom folder"):
        ensure_phantom(tmp_path, cases=2, shape=(16, 16, 12))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_command_line(tmp_path, capsys):
    out_dir = tmp_path / "cli"
    assert (
        phantom_main([str(out_dir), "--cases", "2", "--seed", "3", "--shape", "16", "16", "12"])
        == 0
    )
    assert "2 BraTS phantom cases" in capsys.readouterr().out
    assert nib.load(out_dir / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").shape == (16, 16, 12)
    assert read_grades(out_dir) == {"BraTS2021_00000": "HGG", "BraTS2021_00001": "LGG"}


def volumes_digest(root, index):
    """A digest of case `index`'s voxels, independent of how NIfTI compresses them."""
    images, label_map = read_case(root, index)
    return hashlib.sha256(images.tobytes() + label_map.tobytes()).hexdigest()


def test_the_standard_phantom_keeps_its_voxels(tiny_phantom):
    # The digests of the phantom as it was before it had difficulties: experiments and tests
    # that train on the standard phantom must see the same data.
    assert volumes_digest(tiny_phantom, 0).startswith("48b5ef15b4332a34")
    assert volumes_digest(tiny_phantom, 1).startswith("1157251da19d875d")


def test_hard_cases_overlap_where_standard_ones_separate(tiny_phantom, tmp_path):
    hard = generate_phantom(tmp_path / "hard", cases=2 * CASES, shape=SHAPE, difficulty="hard")
    t1ce = MODALITIES.index("t1ce")

    def core_enhancement(root, index):
        images, label_map = read_case(root, index)
        healthy = (label_map == 0) & (images[0] > 0)
        core = (label_map == 1) | (label_map == 4)
        return images[t1ce][core].mean() / images[t1ce][healthy].mean(), core.sum()

    standard = [core_enhancement(tiny_phantom, index) for index in range(CASES)]
    difficult = [core_enhancement(hard, index) for index in range(2 * CASES)]
    # Standard: every high grade's core enhances more than every low grade's.
    assert min(e for e, _ in standard[0::2]) > max(e for e, _ in standard[1::2])
    # Hard: smaller tumours, and the grades' enhancement ranges overlap.
    assert sum(n for _, n in difficult) < 0.6 * 2 * sum(n for _, n in standard)
    assert min(e for e, _ in difficult[0::2]) < max(e for e, _ in difficult[1::2])
    assert list(read_grades(hard).values()) == ["HGG", "LGG"] * CASES
    assert json.loads((hard / COMPLETION_MARKER).read_text())["difficulty"] == "hard"


def test_ensure_phantom_replaces_a_phantom_of_another_difficulty(tmp_path):
    out_dir = ensure_phantom(tmp_path / "phantom", cases=2, shape=(16, 16, 12))
    standard = read_case(out_dir, 0)[0]
    ensure_phantom(out_dir, cases=2, shape=(16, 16, 12), difficulty="hard")
    assert not np.array_equal(read_case(out_dir, 0)[0], standard)
    with pytest.raises(ValueError, match="difficulty must be one of standard, hard"):
        ensure_phantom(out_dir, cases=2, difficulty="impossible")


def test_the_data_module_keeps_one_phantom_folder_per_difficulty():
    from resnext3d.data import BratsClassificationData
    from resnext3d.data.datamodule import PHANTOM_DIR

    standard = BratsClassificationData(phantom_cases=4)._phantom_dir()
    hard = BratsClassificationData(phantom_cases=4, phantom_difficulty="hard")._phantom_dir()
    assert standard == PHANTOM_DIR
    assert hard == PHANTOM_DIR.with_name("phantom_brats_hard")
