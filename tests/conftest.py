import sys

import pytest

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
