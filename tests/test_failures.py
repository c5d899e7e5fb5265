"""What a user meets when a file is bad: one message naming it, exit status 1, no abort."""

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_process import run_resnext3d
from test_experiments import small_data

from resnext3d.cli import main
from resnext3d.training import read_checkpoint

ROOT = Path(__file__).parents[1]
CLASSIFICATION = str(ROOT / "experiments" / "brats_cls.yaml")
SEGMENTATION = str(ROOT / "experiments" / "brats_seg.yaml")


@pytest.mark.slow  # a fit in a process of its own, with loader workers
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


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
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


@pytest.mark.slow  # a training process of its own, then a resumed fit
def test_a_run_directory_in_use_is_refused_naming_the_process(toy_config, capsys):
    cwd = toy_config.parent
    training = subprocess.Popen(
        [sys.executable, "-m", "resnext3d", "fit", "--config", str(toy_config),
         "--trainer.max_epochs", "1000"],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(cwd.glob("runs/toy/*/checkpoints/last.ckpt")):
            assert training.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        (run,) = cwd.glob("runs/toy/*")
        rows_before = (run / "metrics.csv").read_text().count("\n")
        error = run_expecting_exit_1(["fit", "--resume", str(run)], capsys)
        assert f"{run} is in use by process {training.pid} on " in error
        assert (run / "metrics.csv").read_text().count("\n") >= rows_before  # nothing dropped
        assert not (run / "config.1.yaml").exists()  # nor readied for a resume
    finally:
        training.kill()
        training.wait()
    # Once the process is gone, its directory is free, SIGKILL or not: one more epoch.
    epoch = read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"]
    main(["fit", "--resume", str(run), "--trainer.max_epochs", str(epoch + 2)])
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == epoch + 1


@pytest.fixture
def small_disk(in_tmp_dir, monkeypatch):
    """A 4 MiB file system mounted at `disk/`, made the working directory, so that runs/ is on
    it (root only; skipped elsewhere)."""
    disk = in_tmp_dir / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    monkeypatch.chdir(disk)
    yield disk
    monkeypatch.chdir(in_tmp_dir)
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_full_disk_while_checkpointing_is_one_line(toy_config, small_disk, capsys):
    error = run_expecting_exit_1(["fit", "--config", str(toy_config)], capsys)
    assert "resnext3d fit: error: " in error
    assert ".ckpt: the checkpoint could not be written (no space left on device (" in error
    assert "Traceback" not in error and "enforce fail" not in error
    assert not list(small_disk.rglob("*.partial"))  # the failed write's remains are gone


def test_a_read_only_run_directory_is_refused_before_training(toy_config, small_disk, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    error = run_expecting_exit_1(["fit", "--config", str(toy_config)], capsys)
    assert "the run directory cannot be written (read-only file system)" in error
    assert str(small_disk / "runs" / "toy") in error


def test_checkpoints_are_readable_as_the_umask_allows(toy_config):
    previous = os.umask(0o022)
    try:
        main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "1"])
    finally:
        os.umask(previous)
    checkpoints = list(toy_config.parent.glob("runs/toy/*/checkpoints/*.ckpt"))
    assert checkpoints
    assert {stat.S_IMODE(path.stat().st_mode) for path in checkpoints} == {0o644}


def test_a_checkpoint_with_non_finite_weights_is_refused(
    tiny_phantom, classification_run, in_tmp_dir, capsys
):
    checkpoint = torch.load(classification_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"]["network.fc.weight"][0, 0] = float("nan")
    broken = in_tmp_dir / "broken.ckpt"
    torch.save(checkpoint, broken)
    error = run_expecting_exit_1(
        ["predict", "--config", CLASSIFICATION, *small_data(tiny_phantom),
         "--ckpt_path", str(broken)], capsys,
    )  # fmt: skip
    assert f"{broken} holds a VolumeClassifier" in error
    assert "1 weights that are NaN or infinite (e.g. network.fc.weight)" in error
    assert not list(in_tmp_dir.rglob("predictions.csv"))


def test_a_run_that_fails_before_training_leaves_no_run_directory(in_tmp_dir, capsys):
    empty = in_tmp_dir / "empty"
    empty.mkdir()
    run_expecting_exit_1(["fit", "--config", CLASSIFICATION, "--data.init_args.data_dir",
                          str(empty)], capsys)  # fmt: skip
    assert not list(in_tmp_dir.glob("runs/brats_cls/*"))
