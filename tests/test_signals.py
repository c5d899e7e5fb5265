"""SIGTERM (kill, schedulers) and SIGINT (Ctrl-C) end a fit with the state it reached saved in
last.ckpt and a non-zero exit status; the run then resumes from that state."""

import csv
import signal

import pytest
from cli_process import run_resnext3d

from resnext3d.training import read_checkpoint


@pytest.mark.parametrize(
    ("signal_name", "status", "steps"),
    [
        # SIGTERM: Lightning finishes the batch, then stops (the shell's 128 + 15).
        ("SIGTERM", 128 + signal.SIGTERM, 4 + 3),
        # SIGINT: a KeyboardInterrupt where the process is, before the batch (Lightning's 1).
        ("SIGINT", 1, 4 + 2),
    ],
)
@pytest.mark.slow  # two training processes per signal
def test_a_signal_saves_the_state_exits_non_zero_and_the_run_resumes(
    toy_config, signal_name, status, steps
):
    cwd = toy_config.parent
    stopped = run_resnext3d(
        "fit", "--config", str(toy_config), "--trainer.max_epochs", "3",
        "--trainer.callbacks+=interrupt.KillAt", "--trainer.callbacks.epoch=1",
        "--trainer.callbacks.batch=2", f"--trainer.callbacks.marker={cwd / 'stopped'}",
        f"--trainer.callbacks.signal_name={signal_name}",
        cwd=cwd,
    )  # fmt: skip
    assert stopped.returncode == status, stopped.stderr[-3000:]
    (run,) = cwd.glob("runs/toy/*")
    last = run / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == steps  # 4 steps an epoch
    assert f"stopped by {signal_name} at epoch 1, step {steps}" in stopped.stderr
    assert str(last) in stopped.stderr

    resumed = run_resnext3d("fit", "--resume", str(run), cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finished = read_checkpoint(last)
    assert (finished["epoch"], finished["global_step"]) == (2, 12)
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows if row["val/auroc"]] == ["0", "1", "2"]
    assert [row["epoch"] for row in rows if row["train/loss"]] == ["0", "1", "2"]
