"""A run killed at any point and resumed in its own directory ends exactly where an
uninterrupted run ends: the same weights, metrics and best checkpoint."""

import csv
import signal
from pathlib import Path

import pytest
import torch
import yaml
from cli_process import run_resnext3d
from toy_data import TINY_RESNEXT

ROOT = Path(__file__).parents[1]


@pytest.fixture
def experiment(tiny_phantom, tmp_path) -> list[str]:
    """brats_cls with a tiny encoder, three epochs of three batches, deterministic."""
    overrides = tmp_path / "tiny.yaml"
    overrides.write_text(
        yaml.safe_dump({"model": {"init_args": {"network": TINY_RESNEXT}}, "trainer": {
            "max_epochs": 3, "deterministic": True, "enable_progress_bar": False,
            "enable_model_summary": False, "log_every_n_steps": 1,
        }})
    )  # fmt: skip
    return [
        "--config", str(ROOT / "experiments" / "brats_cls.yaml"), "--config", str(overrides),
        "--data.init_args.data_dir", str(tiny_phantom),
        "--data.init_args.roi_size", "[32, 32, 32]",
        "--data.init_args.batch_size", "2",
    ]  # fmt: skip


def only_run(root: Path) -> Path:
    (run,) = (root / "runs" / "brats_cls").iterdir()
    return run


def metric_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # three training processes, one with loader workers: about a minute
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(experiment, tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    uninterrupted.mkdir(), interrupted.mkdir()
    # Loading by the main process here, by two worker processes there: the augmentation of an
    # item must not depend on which process draws it.
    done = run_resnext3d("fit", *experiment, "--data.init_args.num_workers", "0", cwd=uninterrupted)
    assert done.returncode == 0, done.stderr

    kill = "--trainer.callbacks+=interrupt.KillAt"
    marker = str(interrupted / "killed")
    killed = run_resnext3d(
        "fit", *experiment, "--data.init_args.num_workers", "2",
        kill, "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=1",
        f"--trainer.callbacks.marker={marker}",
        cwd=interrupted,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_run(interrupted)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    partial_rows = len(metric_rows(run))

    resumed = run_resnext3d("fit", "--resume", str(run), cwd=interrupted)
    assert resumed.returncode == 0, resumed.stderr
    assert only_run(interrupted) == run  # no second run directory

    expected = torch.load(only_run(uninterrupted) / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert actual["epoch"] == expected["epoch"]
    difference = max(
        (actual["state_dict"][name].double() - weights.double()).abs().max().item()
        for name, weights in expected["state_dict"].items()
    )
    assert difference == 0.0
    # The best score survived the restart, and metrics.csv has each epoch once.
    best = [c for c in expected["callbacks"] if c.startswith("ModelCheckpoint")][0]
    assert (
        actual["callbacks"][best]["best_model_score"]
        == expected["callbacks"][best]["best_model_score"]
    )
    rows = metric_rows(run)
    assert len(rows) > partial_rows
    assert [(r["epoch"], r["step"]) for r in rows] == [
        (r["epoch"], r["step"]) for r in metric_rows(only_run(uninterrupted))
    ]
    assert (run / "config.1.yaml").is_file()  # the first part's config, kept
