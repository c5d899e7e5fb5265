"""What a user meets when a file is bad: one message naming it, exit status 1, no abort."""

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_process import run_resnext3d
from test_experiments import small_data

from resnext3d.cli import main

ROOT = Path(__file__).parents[1]
CLASSIFICATION = str(ROOT / "experiments" / "brats_cls.yaml")
SEGMENTATION = str(ROOT / "experiments" / "brats_seg.yaml")


def test_a_data_error_while_caching_exits_1_with_its_message(tiny_phantom, tmp_path):
    root = tmp_path / "phantom"
    shutil.copytree(tiny_phantom, root)
    flair = root / "BraTS2021_00005" / "BraTS2021_00005_flair.nii.gz"
    image = nib.load(flair)
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    voxels[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), flair)
    result = run_resnext3d(
        "fit", "--config", CLASSIFICATION, *small_data(root), "--data.init_args.num_workers", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
    assert "resnext3d fit: error:" in result.stderr
    assert str(flair.relative_to(tmp_path)) in result.stderr or str(flair) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def classification_run(tiny_phantom, tmp_path_factory) -> Path:
    """A brats_cls run of one training step, with its last.ckpt."""
    directory, cwd = tmp_path_factory.mktemp("classification"), Path.cwd()
    os.chdir(directory)
    try:
        main(["fit", "--config", CLASSIFICATION, *small_data(tiny_phantom),
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"])  # fmt: skip
    finally:
        os.chdir(cwd)
    (run,) = directory.glob("runs/brats_cls/*")
    return run


def run_expecting_exit_1(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def test_an_empty_checkpoint_is_named(tiny_phantom, in_tmp_dir, capsys):
    empty = in_tmp_dir / "empty.ckpt"
    empty.touch()
    error = run_expecting_exit_1(
        ["validate", "--config", CLASSIFICATION, *small_data(tiny_phantom),
         "--ckpt_path", str(empty)], capsys,
    )  # fmt: skip
    assert f"{empty}: the checkpoint is empty (0 bytes)" in error


def test_a_classification_checkpoint_given_to_segmentation_is_named(
    tiny_phantom, classification_run, in_tmp_dir, capsys
):
    last = classification_run / "checkpoints" / "last.ckpt"
    error = run_expecting_exit_1(
        ["validate", "--config", SEGMENTATION, *small_data(tiny_phantom), "--ckpt_path", str(last)],
        capsys,
    )
    assert f"{last} holds a VolumeClassifier" in error
    assert "this run builds a VolumeSegmenter" in error


def test_a_checkpoint_of_another_encoder_is_named_with_a_differing_weight(
    tiny_phantom, classification_run, in_tmp_dir, capsys
):
    last = classification_run / "checkpoints" / "last.ckpt"
    error = run_expecting_exit_1(
        ["validate", "--config", CLASSIFICATION, *small_data(tiny_phantom),
         "--model.init_args.network.init_args.cardinality", "16", "--ckpt_path", str(last)],
        capsys,
    )  # fmt: skip
    assert "whose weights do not fit this run's model" in error
    assert "176 differ in shape" in error
    assert "network.layer1.0.conv1.weight (128, 64, 1, 1, 1) where the model has (64, 64" in error


def test_resuming_needs_a_run_with_a_checkpoint(classification_run, in_tmp_dir, capsys):
    error = run_expecting_exit_1(["fit", "--resume", str(in_tmp_dir)], capsys)
    assert "not a run directory (no config.yaml)" in error
    unfinished = in_tmp_dir / "unfinished"
    unfinished.mkdir()
    shutil.copy(classification_run / "config.yaml", unfinished)
    error = run_expecting_exit_1(["fit", "--resume", str(unfinished)], capsys)
    assert "no checkpoints/last.ckpt: the run ended before its first checkpoint" in error
