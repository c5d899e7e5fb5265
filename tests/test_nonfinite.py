"""A NaN or infinite loss or gradient never passes silently and never reaches a checkpoint."""

import csv
import math

import pytest
import torch

from resnext3d.cli import main


def checkpoints(root) -> list:
    return sorted(root.glob("runs/toy/*/checkpoints/*.ckpt"))


def test_a_nan_voxel_stops_the_run_naming_the_step_and_the_case(toy_config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(toy_config), "--data.init_args.nan_case", "3"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "stopped before the optimizer step: training loss nan at epoch 0" in error
    assert "case03" in error
    assert not checkpoints(toy_config.parent)  # epoch 0 never finished


def test_a_diverging_learning_rate_stops_with_finite_checkpoints(toy_config, capsys):
    lr = [
        "--model.init_args.optimizer", "torch.optim.AdamW",
        "--model.init_args.optimizer.init_args.lr", "1e6",
        "--trainer.max_epochs", "20",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(toy_config), *lr])
    assert exit_info.value.code == 1
    # Batch norm keeps training losses finite for a while; the first NaN may be in validation.
    assert "lower the learning rate" in capsys.readouterr().err
    for path in checkpoints(toy_config.parent):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_skip_drops_the_batch_counts_it_and_logs_the_real_loss(toy_config):
    skip = ["--nonfinite.action", "skip", "--nonfinite.max_skipped_batches", "5"]
    main(["fit", "--config", str(toy_config), "--data.init_args.nan_case", "3", *skip])
    (last,) = [p for p in checkpoints(toy_config.parent) if p.name == "last.ckpt"]
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["callbacks"]["NonFiniteGuard"]["skipped_batches"] == 2  # once an epoch
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    (metrics,) = toy_config.parent.glob("runs/toy/*/metrics.csv")
    with metrics.open() as handle:
        train_rows = [row for row in csv.DictReader(handle) if row["train/loss"]]
    assert [float(row["train/skipped_batches"]) for row in train_rows] == [1.0, 2.0]
    # The epoch's loss is the mean of what the batches gave, the NaN included: shown, not hidden.
    assert all(math.isnan(float(row["train/loss"])) for row in train_rows)


def test_skip_stops_after_its_limit(toy_config, capsys):
    skip = ["--nonfinite.action", "skip", "--nonfinite.max_skipped_batches", "1"]
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(toy_config), "--data.init_args.nan_case", "3", *skip])
    assert "after 1 skipped batches" in capsys.readouterr().err


def test_a_stopped_run_keeps_its_metrics_rows_and_its_last_epoch(toy_config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "4",
              "--trainer.callbacks+=interrupt.PoisonWeightsAt",
              "--trainer.callbacks.epoch=2"])  # fmt: skip
    assert "training loss nan at epoch 2" in capsys.readouterr().err
    (metrics,) = toy_config.parent.glob("runs/toy/*/metrics.csv")
    with metrics.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows if row["val/loss"]] == ["0", "1"]
    assert [row["epoch"] for row in rows if row["train/loss"]] == ["0", "1"]
    (last,) = [p for p in checkpoints(toy_config.parent) if p.name == "last.ckpt"]
    assert torch.load(last, weights_only=True)["epoch"] == 1
