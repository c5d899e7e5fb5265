"""Every process of one run agrees on its directory; separate runs never share one."""

import os
import time

import pytest

from resnext3d.cli import RUN_VERSION_VARIABLE, _run_version, main


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in (
        RUN_VERSION_VARIABLE,
        "SLURM_JOB_ID",
        "SLURM_RESTART_COUNT",
        "TORCHELASTIC_RUN_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
    os.environ.pop(RUN_VERSION_VARIABLE, None)  # set by _run_version itself, not monkeypatch


def test_workers_inherit_the_launching_process_version(monkeypatch):
    launched = _run_version()
    assert launched.count("-") in (2, 3)  # start time, process id, and run number after the first
    assert _run_version() == launched  # what a worker started with this environment sees


def test_runs_of_one_process_in_the_same_second_get_their_own_versions(monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda _format: "20261129-120000")
    versions = set()
    for _ in range(3):
        versions.add(_run_version())
        os.environ.pop(RUN_VERSION_VARIABLE)  # as the CLI does when a run ends
    assert len(versions) == 3


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [("SLURM_JOB_ID", "4242", "slurm-4242"), ("TORCHELASTIC_RUN_ID", "abc", "torchrun-abc")],
)
def test_launchers_that_start_every_rank_give_a_shared_version(
    monkeypatch, variable, value, expected
):
    monkeypatch.setenv(variable, value)
    assert _run_version() == expected


def test_an_explicit_version_wins(monkeypatch):
    monkeypatch.setenv(RUN_VERSION_VARIABLE, "my-run")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert _run_version() == "my-run"


@pytest.mark.slow  # two fits
def test_a_requeued_slurm_job_continues_in_its_run_directory(toy_config, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "1"])
    run = toy_config.parent / "runs" / "toy" / "slurm-4242"
    first_rows = (run / "metrics.csv").read_text().splitlines()
    # The requeued job: the same command, the same job id, a restart count.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    main(["fit", "--config", str(toy_config), "--trainer.max_epochs", "1"])
    assert [p.name for p in run.parent.iterdir()] == ["slurm-4242"]
    assert (run / "metrics.csv").read_text().splitlines()[: len(first_rows)] == first_rows
