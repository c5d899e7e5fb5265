"""The learning-rate schedule takes its length from the run, not from a number in the config."""

import csv

import pytest
import torch
import yaml
from toy_data import TINY_RESNEXT

from resnext3d.cli import main
from resnext3d.training import WarmupCosineLR


def rates(scheduler: WarmupCosineLR, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def test_warmup_then_cosine_to_the_floor_at_the_last_step():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=3, min_lr_ratio=0.1)
    scheduler.fit_to_run(13)
    seen = rates(scheduler, 13)
    assert seen[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert seen[3] == pytest.approx(1.0)
    assert seen[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(seen[3:], seen[4:], strict=False))


def test_the_run_length_is_not_part_of_the_saved_state():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = WarmupCosineLR(optimizer)
    scheduler.fit_to_run(10)
    assert "total_steps" not in scheduler.state_dict()
    with pytest.raises(ValueError, match="max_epochs or max_steps"):
        scheduler.fit_to_run(float("inf"))


@pytest.mark.parametrize("max_epochs", [1, 2])
def test_the_rate_reaches_zero_at_the_end_of_any_run_length(in_tmp_dir, max_epochs):
    config = {
        "trainer": {
            "max_epochs": max_epochs,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "log_every_n_steps": 1,
            "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": "runs"}},
            "callbacks": [{"class_path": "LearningRateMonitor"}],
        },
        "model": {
            "class_path": "resnext3d.tasks.VolumeClassifier",
            "init_args": {
                "network": TINY_RESNEXT,
                "scheduler": {"class_path": "resnext3d.training.WarmupCosineLR"},
            },
        },
        "data": {"class_path": "toy_data.ToyVolumes"},
    }
    (in_tmp_dir / "config.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", "config.yaml"])
    (metrics,) = in_tmp_dir.glob("runs/**/metrics.csv")
    with metrics.open() as handle:
        seen = [float(row["lr-AdamW"]) for row in csv.DictReader(handle) if row["lr-AdamW"]]
    assert len(seen) == 4 * max_epochs  # 8 toy cases in batches of 2
    assert seen[0] == pytest.approx(1e-3)
    assert seen[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(seen, seen[1:], strict=False))  # never climbs back
