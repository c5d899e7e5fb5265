"""`resnext3d cv`: every fold an ordinary fit run in the cross-validation's directory, the folds'
validation cases a partition of the cases, finished folds skipped, killed ones resumed, a failed
fold reported, and the summary of each fold's best scores."""

import csv
import subprocess
from pathlib import Path

import pytest
import yaml

from resnext3d import sweep
from resnext3d.crossval import cv_main
from resnext3d.data.splits import load_split

ROOT = Path(__file__).parents[1]
EXPERIMENT = ROOT / "experiments" / "brats_cls.yaml"


@pytest.fixture
def toy_config(tiny_phantom, tmp_path) -> Path:
    """brats_cls with the tiny network on the tiny phantom: one training step an epoch."""
    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"init_args": {"network": {"init_args": {"preset": "resnext14_tiny"}}}},
                "trainer": {
                    "limit_train_batches": 1, "accelerator": "cpu", "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1,
                },
                "data": {"init_args": {
                    "data_dir": str(tiny_phantom), "roi_size": [16, 16, 16], "batch_size": 2,
                    "num_workers": 0, "spacing": [4.0, 4.0, 4.0],
                }},
            }
        )
    )  # fmt: skip
    return path


def cv_arguments(toy_config: Path, out_dir: Path, *more: str) -> list[str]:
    return [
        "--config", str(EXPERIMENT), "--config", str(toy_config), "--folds", "2",
        "--out", str(out_dir), "--trainer.max_epochs", "1", *more,
    ]  # fmt: skip


def read_results(out_dir: Path) -> list[dict]:
    with (out_dir / "cv_results.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # a fit per fold, each in a process of its own
def test_a_tiny_cross_validation_trains_every_fold_and_a_second_run_launches_nothing(
    toy_config, tmp_path, monkeypatch, capsys
):
    out_dir = tmp_path / "cv"
    assert cv_main(cv_arguments(toy_config, out_dir)) == 0
    printed = capsys.readouterr().out

    splits = [load_split(out_dir / f"fold{fold}") for fold in (0, 1)]
    assert [(split.fold, split.num_folds) for split in splits] == [(0, 2), (1, 2)]
    assert not set(splits[0].val) & set(splits[1].val)
    assert sorted(splits[0].val + splits[1].val) == sorted(splits[0].train + splits[0].val)
    for fold in (0, 1):
        run = out_dir / f"fold{fold}"  # an ordinary run directory, for `predict --run`
        for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", sweep.FINISHED_FILE):
            assert (run / name).is_file(), (run, name)

    rows = read_results(out_dir)
    assert [row["fold"] for row in rows] == ["0", "1", "mean", "std"]
    assert [(row["status"], row["epoch"]) for row in rows[:2]] == [("finished", "0")] * 2
    metrics = list(rows[0])[3:]
    assert metrics[0] == "val/auroc" and {"val/acc", "val/loss"} <= set(metrics)
    for metric in metrics:
        values = [float(row[metric]) for row in rows[:2]]
        assert float(rows[2][metric]) == pytest.approx(sum(values) / 2, nan_ok=True)
    assert rows[0]["val/auroc"] == str(sweep.best_score(out_dir / "fold0")[1])
    table = (out_dir / "cv_results.md").read_text()
    assert len(table.splitlines()) == 5 and table in printed
    assert len({line.count("|") for line in table.splitlines()}) == 1

    launched = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: launched.append(args))
    assert cv_main(cv_arguments(toy_config, out_dir)) == 0
    assert launched == []
    assert capsys.readouterr().out.count("finished, skipped") == 2

    # A fold killed after its checkpoint, without its finished marker, is resumed in place.
    killed = out_dir / "fold1"
    (killed / sweep.FINISHED_FILE).unlink()

    class FinishingFit:
        def __init__(self, command, **kwargs):
            launched.append(command)
            (killed / sweep.FINISHED_FILE).write_text("{}")

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FinishingFit)
    assert cv_main(cv_arguments(toy_config, out_dir)) == 0
    (command,) = launched
    assert command[command.index("fit") :] == ["fit", "--resume", str(killed)]


def test_a_failed_fold_is_failed_in_the_summary_and_the_command_exits_1(
    toy_config, tmp_path, monkeypatch, capsys
):
    out_dir = tmp_path / "cv"
    launched = []

    class Fit:
        """Fold 0's fit fails; fold 1's finishes (without a checkpoint, so without scores)."""

        def __init__(self, command, **kwargs):
            launched.append(command)
            self.fold = command[command.index("--data.init_args.fold") + 1]

        def wait(self) -> int:
            if self.fold == "0":
                return 1
            (out_dir / "fold1" / sweep.FINISHED_FILE).write_text("{}")
            return 0

    monkeypatch.setattr(subprocess, "Popen", Fit)
    assert cv_main(cv_arguments(toy_config, out_dir)) == 1
    assert len(launched) == 2  # the failed fold did not stop the next
    rows = read_results(out_dir)
    assert [(row["fold"], row["status"]) for row in rows[:2]] == [
        ("0", "failed"),
        ("1", "finished"),
    ]
    assert "| 0 | failed |" in (out_dir / "cv_results.md").read_text()
    err = capsys.readouterr().err
    assert f"failed: its fit exited 1; its output: {out_dir / 'fold0' / 'cv.log'}" in err
    assert "1 of 2 folds failed" in err


def test_print_commands_default_directory_and_slurm(toy_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cv_main(["--config", str(EXPERIMENT), "--folds", "3", "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    out_dir = Path("runs") / "brats_cls" / "cv-3fold"
    for fold, line in enumerate(lines):
        assert line.startswith(f"resnext3d fit --config {EXPERIMENT} ")
        assert f"--data.init_args.fold {fold} --data.init_args.num_folds 3" in line
        assert f"--run_dir={(out_dir / f'fold{fold}').resolve()}" in line

    # Other overrides, another directory: a fold of one is never resumed by the other.
    assert cv_main(["--config", str(EXPERIMENT), "--folds", "3", "--trainer.max_epochs=2",
                    "--slurm"]) == 0  # fmt: skip
    (script,) = Path("runs/brats_cls").glob("cv-3fold-*/cv.sbatch")
    text = script.read_text()
    assert "#SBATCH --array=0-2" in text
    assert '--trainer.max_epochs=2 --task "$SLURM_ARRAY_TASK_ID"' in text

    assert cv_main(["--config", str(EXPERIMENT), "--data.init_args.fold", "1"]) == 2
    assert "each fold's split and directory are the cross-validation's" in capsys.readouterr().err


def test_make_cv_names_the_experiments_for_an_unknown_one():
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "cv", "EXP=no_such_experiment"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "make cv: unknown experiment 'no_such_experiment'" in result.stderr
    for config in (ROOT / "experiments").glob("*.yaml"):
        assert config.stem in result.stderr
