import sys

import pytest

from resnext3d.data import generate_phantom


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """Eight small BraTS-2021-layout cases (four per grade), shared by the end-to-end tests."""
    return generate_phantom(tmp_path_factory.mktemp("phantom"), cases=8, shape=(32, 32, 24))


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Runs the CLI in process from an empty working directory, as `make train` would."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["resnext3d"])  # Lightning's CLI warns of unused argv
    return tmp_path
