"""Distributed data parallel on CPU processes over gloo, through the CLI and Lightning's own `ddp`
launcher (each run is a subprocess that starts its workers as a multi-GPU run would)."""

import csv
from pathlib import Path

import pytest
import torch.distributed
import yaml
from cli_process import run_resnext3d
from toy_data import TINY_RESNEXT

from resnext3d.data import generate_phantom

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch built without distributed support"
)
ROOT = Path(__file__).parents[1]
# Reduction order differs between one process and two; nothing else may.
TOLERANCE = 1e-4


def resnext3d(*args: str, cwd: Path) -> None:
    result = run_resnext3d(*args, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def final_metrics(run: Path, prefix: str = "val/") -> dict[str, float]:
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = {}
    for row in rows:
        last.update(
            {key: float(value) for key, value in row.items() if key.startswith(prefix) and value}
        )
    return last


def runs(cwd: Path, name: str) -> list[Path]:
    return sorted((cwd / "runs" / name).iterdir(), key=lambda path: path.stat().st_mtime)


def write_config(path: Path, trainer: dict, data: dict, norm: str = "batch") -> Path:
    network = {**TINY_RESNEXT, "init_args": {**TINY_RESNEXT["init_args"], "norm": norm}}
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            # Float32, whatever the CPU: the tolerance is float32 rounding, not bf16's.
            "precision": "32-true",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": path.stem},
                }
            ],
            **trainer,
        },
        "model": {
            "class_path": "resnext3d.tasks.VolumeClassifier",
            "init_args": {"network": network},
        },
        "data": data,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow  # two training processes: ~15 s
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    """Two ranks of batch 2 take the same steps as one of batch 4. Group norm, because batch norm
    would see other batches (SyncBatchNorm, `--trainer.sync_batchnorm`, needs GPUs)."""
    toy = {"class_path": "toy_data.ToyVolumes", "init_args": {"shuffle": False}}
    config = write_config(tmp_path / "toy.yaml", {"max_epochs": 1}, toy, norm="group")
    resnext3d(
        "fit",
        "--config",
        str(config),
        "--trainer.devices",
        "1",
        "--data.batch_size",
        "4",
        cwd=tmp_path,
    )
    resnext3d(
        "fit", "--config", str(config), "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--data.batch_size", "2", cwd=tmp_path,
    )  # fmt: skip
    single, distributed = runs(tmp_path, "toy")
    expected, actual = final_metrics(single), final_metrics(distributed)
    assert set(expected) >= {"val/loss", "val/acc", "val/auroc"}
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=TOLERANCE), key
    # Rank 0 alone writes the run's files, into one directory.
    assert (distributed / "config.yaml").is_file()
    written = sorted(path.name for path in (distributed / "checkpoints").iterdir())
    assert written == ["best-epoch000.ckpt", "last.ckpt"]  # once each, no partial file left


@pytest.mark.slow  # two processes validating: ~20 s
def test_distributed_validation_counts_every_case_once(tmp_path):
    """Three validation cases over two ranks: a padded, repeated case would change the metrics."""
    phantom = generate_phantom(tmp_path / "phantom", cases=10, shape=(32, 32, 24))
    data = {
        "class_path": "resnext3d.data.BratsClassificationData",
        "init_args": {
            "data_dir": str(phantom), "roi_size": [32, 32, 32], "batch_size": 2,
            "num_workers": 0, "val_fraction": 0.3,
        },
    }  # fmt: skip
    config = write_config(tmp_path / "cls.yaml", {"max_epochs": 1}, data)
    resnext3d("fit", "--config", str(config), "--trainer.limit_train_batches", "2", cwd=tmp_path)
    checkpoint = next(runs(tmp_path, "cls")[0].glob("checkpoints/*.ckpt"))
    for devices in ("1", "2"):
        resnext3d(
            "validate", "--config", str(config), "--ckpt_path", str(checkpoint),
            "--trainer.devices", devices, "--trainer.strategy", "ddp", cwd=tmp_path,
        )  # fmt: skip
    _, single, distributed = runs(tmp_path, "cls")
    expected, actual = final_metrics(single), final_metrics(distributed)
    assert set(expected) >= {"val/loss", "val/acc", "val/auroc"}
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-6), key
