"""Every experiment config runs through the CLI, as `make train` runs it, on a tiny phantom."""

import csv
from pathlib import Path

import pytest
import torch
import yaml

from resnext3d.cli import _keep_wandb_offline_without_key, main
from resnext3d.training.performance import default_precision

EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))
EXPERIMENT = {path.stem: path for path in EXPERIMENTS}


def small_data(phantom) -> list[str]:
    return [
        "--data.init_args.data_dir", str(phantom),
        "--data.init_args.roi_size", "[32, 32, 32]",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip


def fit_one_step(config: Path, phantom: Path, cwd: Path, *overrides: str) -> Path:
    """`config` fitted for one training step, as `make train` runs it: its run directory,
    checked."""
    main(["fit", "--config", str(config), *small_data(phantom), "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "1", *overrides])  # fmt: skip
    (run,) = (cwd / "runs" / config.stem).iterdir()
    for written in ("config.yaml", "split.json", "metrics.csv", "checkpoints/last.ckpt"):
        assert (run / written).exists(), written
    # The configs leave the precision to the device; the run's config records what it got.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == default_precision("cpu")
    # Tensors and plain Python values only: no MONAI MetaTensor, no pickled object.
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    return run


# One experiment per task; every experiment, with its full network, is in the slow sweep.
@pytest.mark.parametrize(
    ("experiment", "smaller"),
    [("brats_cls", ["--model.init_args.network.init_args.layers", "[1, 1, 1, 1]"]),
     ("brats_seg", [])],
    ids=["brats_cls", "brats_seg"],
)  # fmt: skip
def test_a_task_trains_and_validates_a_step_of_its_experiment_through_the_cli(
    experiment, smaller, tiny_phantom, in_tmp_dir
):
    validate_once = ["--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1"]
    config = EXPERIMENT[experiment]
    run = fit_one_step(config, tiny_phantom, in_tmp_dir, *validate_once, *smaller)
    with (run / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle) if row["val/loss"]] == ["0"]


@pytest.mark.slow  # every experiment through every subcommand: minutes (brats_seg_gpu's UNet)
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda path: path.stem)
def test_an_experiment_fits_validates_tests_predicts_and_resumes_through_the_cli(
    config, tiny_phantom, in_tmp_dir
):
    experiment = ["--config", str(config), *small_data(tiny_phantom)]
    run = fit_one_step(config, tiny_phantom, in_tmp_dir)
    last = run / "checkpoints" / "last.ckpt"
    for command in ("validate", "test"):
        main([command, *experiment, "--ckpt_path", str(last)])
    # The run's own config and best checkpoint, into a new run directory beside it.
    before = set((in_tmp_dir / "runs" / config.stem).iterdir())
    main(["predict", "--run", str(run), *small_data(tiny_phantom)])
    (predicted,) = set((in_tmp_dir / "runs" / config.stem).iterdir()) - before
    assert list(predicted.glob("predictions*"))
    runs = set((in_tmp_dir / "runs" / config.stem).iterdir())
    resume = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1"]
    main(["fit", "--resume", str(run), *resume])
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert set((in_tmp_dir / "runs" / config.stem).iterdir()) == runs  # resumed in place
    assert (run / "config.1.yaml").is_file()


def test_predict_writes_a_row_per_case_of_the_phantom(tiny_phantom, in_tmp_dir):
    config = Path(__file__).parents[1] / "experiments" / "brats_cls.yaml"
    main(["predict", "--config", str(config), *small_data(tiny_phantom)])
    (run,) = (in_tmp_dir / "runs" / "brats_cls").iterdir()
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == [f"BraTS2021_{i:05d}" for i in range(8)]
    assert set(rows[0]) == {"case_id", "p_LGG", "p_HGG", "predicted"}


def test_wandb_goes_offline_without_an_api_key(monkeypatch, tmp_path):
    class Logger:
        class init_args:  # noqa: N801 - the shape of a jsonargparse namespace
            offline = False

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _keep_wandb_offline_without_key(Logger)
    assert Logger.init_args.offline is True

    Logger.init_args.offline = False
    monkeypatch.setenv("WANDB_API_KEY", "key")
    _keep_wandb_offline_without_key(Logger)
    assert Logger.init_args.offline is False


def test_segmentation_steps_mix_cases(tiny_phantom):
    """One case per step never learns "no enhancing tumour here": in a batch from one low-grade
    case the Dice gradient on ET all but vanishes. The experiment's steps hold several cases."""
    from resnext3d.data import BratsSegmentationData

    config = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "brats_seg.yaml").open())
    settings = {**config["data"]["init_args"], "data_dir": str(tiny_phantom), "num_workers": 0}
    data = BratsSegmentationData(**settings)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert settings["batch_size"] >= 2
    assert len(batch["image"]) == settings["batch_size"] * settings["samples_per_case"]
    assert len(set(batch["case_id"])) == settings["batch_size"]
