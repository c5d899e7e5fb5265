import sys

import pytest
import yaml
from toy_data import TINY_RESNEXT

from resnext3d.data import generate_phantom


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """Eight small BraTS-2021-layout cases (grades alternating, seed 0), shared by every test
    that reads a phantom without changing it."""
    return generate_phantom(tmp_path_factory.mktemp("phantom"), cases=8, shape=(32, 32, 24))


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Runs the CLI in process from an empty working directory, as `make train` would."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["resnext3d"])  # Lightning's CLI warns of unused argv
    return tmp_path


@pytest.fixture
def toy_config(in_tmp_dir):
    """`toy.yaml`: the tiny classifier on ToyVolumes for two epochs; everything else (loggers
    into runs/toy/<run>, checkpoints of the best val/auroc and the last state) is the CLI's
    defaults, as for every experiment."""
    config = {
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {
            "class_path": "resnext3d.tasks.VolumeClassifier",
            "init_args": {"network": TINY_RESNEXT},
        },
        "data": {"class_path": "toy_data.ToyVolumes"},
    }
    path = in_tmp_dir / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
