"""`last.ckpt` is the latest state after every epoch, whatever the monitored metric did, and a
resumed run continues from it."""

import csv

import pytest
import torch

from resnext3d.cli import main
from resnext3d.training import read_checkpoint

# The weights never change: no epoch after the first improves the monitored metric (in 32³
# volumes; in the toy's 16³ the batch norms' running statistics alone moved val/auroc).
FROZEN = ["--model.init_args.optimizer", "torch.optim.SGD",
          "--model.init_args.optimizer.init_args.lr", "0",
          "--data.init_args.size", "32"]  # fmt: skip


def validation_scores(run, metric: str = "val/auroc") -> list[float]:
    with (run / "metrics.csv").open() as handle:
        return [float(row[metric]) for row in csv.DictReader(handle) if row[metric]]


@pytest.mark.slow  # four epochs at 32³ and a resumed fit
def test_last_checkpoint_follows_epochs_that_do_not_improve(toy_config):
    main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "3", *FROZEN])
    (run,) = toy_config.parent.glob("runs/toy/*")
    scores = validation_scores(run)
    assert len(scores) == 3 and max(scores[1:]) <= scores[0]  # the premise: no later improvement
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 12)  # 3 epochs of 4 steps
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt",
        "last.ckpt",
    ]

    # Resumed for one more epoch, the run continues after epoch 2, not from the best epoch.
    main(["fit", "--resume", str(run), "--trainer.max_epochs", "4"])
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (3, 16)
    assert len(validation_scores(run)) == 4  # epochs 0-2 kept once, epoch 3 added
    best = torch.load(run / "checkpoints" / "best-epoch000.ckpt", weights_only=True)
    assert best["epoch"] == 0


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_a_config_naming_lightnings_model_checkpoint_gets_the_latest_last_checkpoint(
    toy_config,
):
    callback = (
        "--trainer.callbacks+={'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint', "
        "'init_args': {'dirpath': 'mine', 'save_last': true, "
        "'monitor': 'val/acc', 'mode': 'max'}}"
    )
    main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "3", *FROZEN, callback])
    (run,) = toy_config.parent.glob("runs/toy/*")
    scores = validation_scores(run, "val/acc")
    assert max(scores[1:]) <= scores[0]  # the premise: no later improvement
    assert read_checkpoint(toy_config.parent / "mine" / "last.ckpt")["epoch"] == 2
