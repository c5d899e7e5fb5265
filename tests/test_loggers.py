import csv

from resnext3d.training.loggers import ResumableCSVLogger


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_resumed_run_appends_to_the_metrics_of_its_first_part(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="brats_cls", version="slurm-7")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    # The requeued job: a new process, a new logger, the same run directory.
    resumed = ResumableCSVLogger(tmp_path, name="brats_cls", version="slurm-7")
    resumed.log_metrics({"train/loss": 0.5, "val/auroc": 0.9}, step=1)
    resumed.save()

    rows = read_metrics(tmp_path / "brats_cls" / "slurm-7" / "metrics.csv")
    assert [row["train/loss"] for row in rows] == ["1.0", "0.5"]
    assert [row["val/auroc"] for row in rows] == ["", "0.9"]
    assert [row["step"] for row in rows] == ["0", "1"]
