import csv
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import resnext3d
from resnext3d.cli import main
from resnext3d.tasks import VolumeClassifier


def run_dirs(root: Path = Path("runs/toy")) -> list[Path]:
    return sorted(root.iterdir())


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_fit_writes_config_checkpoints_and_metrics_in_one_run_directory(toy_config):
    main(["fit", "--config", str(toy_config)])
    main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "1"])
    first, second = run_dirs()  # a second run gets its own directory, nothing is overwritten
    assert (first / "config.yaml").is_file() and (second / "config.yaml").is_file()
    assert (first / "checkpoints" / "last.ckpt").is_file()
    assert list(first.glob("events.out.tfevents.*"))
    with (first / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle)))
    for stage in ("train", "val"):
        for metric in ("loss", "acc", "balanced_acc", "auroc", "f1"):
            assert f"{stage}/{metric}" in columns


def test_data_values_are_linked_into_the_model_and_overrides_apply(toy_config):
    main(
        [
            "fit",
            "--config",
            str(toy_config),
            "--trainer.max_epochs",
            "1",
            "--model.network.init_args.cardinality",
            "4",
        ]
    )
    (run,) = run_dirs()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (
        checkpoint["state_dict"]["network.conv1.weight"].shape[1] == 4
    )  # in_channels from the data
    assert checkpoint["state_dict"]["network.fc.weight"].shape[0] == 2
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["network"]["init_args"]["cardinality"] == 4


def test_predict_writes_one_row_of_probabilities_per_case(toy_config):
    main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "1"])
    checkpoint = run_dirs()[0] / "checkpoints" / "last.ckpt"
    main(["predict", "--config", str(toy_config), "--ckpt_path", str(checkpoint)])
    with (run_dirs()[-1] / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == [f"case{i:02d}" for i in range(8)]
    for row in rows:
        probabilities = [float(row["p_LGG"]), float(row["p_HGG"])]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] == ("HGG" if probabilities[1] > probabilities[0] else "LGG")


def test_class_weights_must_match_the_classes():
    network = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=2)
    with pytest.raises(ValueError, match="3 entries for 2 classes"):
        VolumeClassifier(network, class_weights=[1.0, 2.0, 3.0])


def test_make_train_names_the_experiments_for_an_unknown_one():
    root = Path(__file__).parents[1]
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(root), "train", "EXP=no_such_experiment"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "unknown experiment 'no_such_experiment'" in result.stderr
    for config in (root / "experiments").glob("*.yaml"):
        assert config.stem in result.stderr
