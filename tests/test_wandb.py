"""wandb is one switch away and never blocks: without an API key a run goes offline into its own
directory, with its metrics and figures, and no prompt."""

import os
from pathlib import Path

import pytest
from cli_process import run_resnext3d
from test_experiments import small_data

ROOT = Path(__file__).parents[1]


@pytest.mark.slow  # a segmentation fit in a process of its own, wandb's service beside it
def test_a_segmentation_run_logs_metrics_and_figures_to_wandb_offline(tiny_phantom, tmp_path):
    environment = {key: value for key, value in os.environ.items() if "WANDB" not in key}
    environment["HOME"] = str(tmp_path)  # no ~/.netrc: no key anywhere
    result = run_resnext3d(
        "fit",
        "--config", str(ROOT / "experiments" / "brats_seg.yaml"),
        "--config", str(ROOT / "experiments" / "loggers" / "wandb.yaml"),
        *small_data(tiny_phantom),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.check_val_every_n_epoch", "1",
        cwd=tmp_path, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "brats_seg").iterdir()
    (offline,) = (run / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads
    for key in (b"train/loss", b"val/dice_mean", b"val/hd95_mean"):
        assert key in records.read_bytes(), key
    assert list((offline / "files" / "media" / "images").rglob("*.png"))  # the figure
    assert (run / "metrics.csv").is_file()  # the other loggers still write
