"""A study's runs: each an ordinary ``resnext3d fit`` of the base experiment, the study's
overrides and the variant's network arguments, in a directory of its own (``--run_dir``),
launched by :mod:`resnext3d.sweep`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import lightning as L

from resnext3d.study.config import Run, Study
from resnext3d.sweep import FinishedRun, SweepRun, slurm_array_script

TAGS_FILE = "tags.json"
LOG_FILE = "study.log"


class StudyRun(FinishedRun):
    """Logs a study run's tags to every logger (hyperparameters ``study/C``...) and times its
    training steps.

    Seconds per step are the wall time from a training batch's start to its end (forward,
    backward, optimizer step; not data loading, validation or start-up), summed over the run's
    steps but the first of each process, which pays for one-time initialisation. The sums live in
    the checkpoint, so a resumed run continues them. When the fit completes, ``finished.json`` in
    the run directory marks the run finished and holds the timing.

    Args:
        tags: the run's variant, C, d, depth, seed (and fold).
    """

    def __init__(self, tags: dict[str, Any]) -> None:
        self.tags = dict(tags)
        self.steps, self.seconds = 0, 0.0
        self._started: float | None = None
        self._first = True

    @property
    def state_key(self) -> str:
        return "StudyRun"

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.seconds = state_dict["steps"], state_dict["seconds"]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({f"study/{name}": value for name, value in self.tags.items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._started is None:
            return
        elapsed, self._started = time.perf_counter() - self._started, None
        if self._first:
            self._first = False
            return
        self.steps += 1
        self.seconds += elapsed

    def record(self) -> dict[str, Any]:
        seconds_per_step = self.seconds / self.steps if self.steps else None
        return {
            "tags": self.tags,
            "train_steps_timed": self.steps,
            "seconds_per_step": seconds_per_step,
        }


def fit_arguments(study: Study, run: Run) -> list[str]:
    """The ``resnext3d fit`` arguments of a new run: the base experiments and overrides, the
    variant's network, the run's seed (and fold) and directory, and the StudyRun callback."""
    arguments = ["fit", *study.config_arguments(), *study.variant_arguments(run.variant)]
    arguments += [f"--seed_everything={run.seed}", f"--run_dir={study.run_dir(run).resolve()}"]
    if run.fold is not None:
        arguments.append(f"--data.init_args.fold={run.fold}")
    arguments += [
        "--trainer.callbacks+=resnext3d.study.StudyRun",
        f"--trainer.callbacks.tags={json.dumps(run.tags)}",
    ]
    return arguments


def sweep_run(study: Study, run: Run) -> SweepRun:
    def start() -> list[str]:
        run_dir = study.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / TAGS_FILE).write_text(json.dumps(run.tags, indent=1) + "\n")
        return fit_arguments(study, run)

    wandb = {
        "WANDB_NAME": f"{study.name}/{run.name}",
        "WANDB_RUN_GROUP": study.name,
        "WANDB_TAGS": ",".join(f"{key}={value}" for key, value in run.tags.items()),
    }
    return SweepRun(run.name, study.run_dir(run), LOG_FILE, start, wandb)


def slurm_script(study: Study, arguments: list[str]) -> str:
    """An sbatch script that runs every run of the study as one task of a job array;
    `arguments` are the study command's own (the config and its overrides)."""
    out_dir = study.out_dir.resolve()
    command = [sys.executable, "-m", "resnext3d", "study", *arguments, f"--out_dir={out_dir}"]
    afterwards = (
        "the same `resnext3d study` command without --task writes the results (it trains\n"
        "# only runs that did not finish)"
    )
    return slurm_array_script(study.name, len(study.runs), out_dir, command, afterwards)
