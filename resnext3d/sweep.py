"""What a sweep of ``resnext3d fit`` runs needs, whatever it sweeps (``resnext3d study``'s variants,
``resnext3d cv``'s folds): each run an ordinary fit launched as a subprocess into a directory of
its own, a finished run skipped, a killed one resumed with ``fit --resume``, a failed one reported
while the sweep goes on, SIGTERM and SIGINT forwarded to the running fit; then the best score of
each run from its last.ckpt, and a SLURM array script with one task per run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from resnext3d.training.checkpoints import LAST_CHECKPOINT, read_checkpoint

# Written by a run's FinishedRun callback when its fit completes: the run is finished.
FINISHED_FILE = "finished.json"
# A scheduler's or `kill`'s SIGTERM and a terminal's Ctrl-C stop the sweep and the fit it runs.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Seconds a stopped fit has to save its state and exit before its processes are killed.
STOP_GRACE_SECONDS = 60.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class SweepStopped(Exception):
    """A stop signal reached the sweep. `fit_status` is the exit status of the fit it stopped,
    None where none was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.fit_status: int | None = None


class FinishedRun(L.Callback):
    """Marks the run finished when its fit completes: ``finished.json`` in the run directory,
    holding :meth:`record`. A fit that was stopped or failed never reaches this."""

    def record(self) -> dict[str, Any]:
        """What the marker holds; a subclass adds what it measured."""
        return {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.default_root_dir:
            path = Path(trainer.default_root_dir) / FINISHED_FILE
            path.write_text(json.dumps(self.record(), indent=1) + "\n")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name in progress messages, its directory, the name of the file in
    it that takes the fit's output, `start`, which readies a new run's directory and returns the
    new fit's arguments, and the wandb environment variables that name, group and tag its fit."""

    name: str
    run_dir: Path
    log_name: str
    start: Callable[[], list[str]]
    wandb: dict[str, str] = field(default_factory=dict)  # e.g. WANDB_RUN_GROUP for its fit

    @property
    def log(self) -> Path:
        return self.run_dir / self.log_name


def run_state(run_dir: Path) -> str:
    """ "finished", "resumable" (killed after a checkpoint), or "new" (nothing to continue)."""
    if (run_dir / FINISHED_FILE).is_file():
        return "finished"
    if (run_dir / LAST_CHECKPOINT).is_file():
        return "resumable"
    return "new"


def launch(run: SweepRun) -> int:
    """Run `run` to completion in a subprocess unless it is finished; return its exit status.

    Its output goes to its log. A SweepStopped raised while the fit runs stops it
    (:func:`stop_fit`) before it propagates."""
    state = run_state(run.run_dir)
    if state == "finished":
        return 0
    if state == "resumable":
        arguments = ["fit", "--resume", str(run.run_dir)]
    else:
        shutil.rmtree(run.run_dir, ignore_errors=True)  # killed before its first checkpoint
        arguments = run.start()
    environment = {**os.environ, **run.wandb}
    environment.pop("RESNEXT3D_RUN_VERSION", None)  # the run's directory is its own
    with run.log.open("a") as log:
        log.write(f"$ resnext3d {shlex.join(arguments)}\n")
        log.flush()
        fit = subprocess.Popen(
            [sys.executable, "-m", "resnext3d", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            # A session, and so a process group, of its own: a terminal's Ctrl-C, which goes to
            # the whole foreground group, reaches the sweep alone, which forwards it once (in the
            # sweep's group the fit would get it twice, the second while saving its state); and
            # the group holds the fit's data-loader workers and DDP ranks, to kill with it.
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        try:
            return fit.wait()
        except SweepStopped as stopped:
            stopped.fit_status = stop_fit(fit, stopped.signum)
            raise


def stop_fit(fit: subprocess.Popen, signum: int, grace: float = STOP_GRACE_SECONDS) -> int:
    """Forward `signum` to the fit, which saves its state and exits; kill its process group
    if it has not exited after `grace` seconds, or at once at a second stop signal. Returns the
    fit's exit status."""
    fit.send_signal(signum)
    try:
        return fit.wait(timeout=grace)
    except (subprocess.TimeoutExpired, SweepStopped):
        # Not yet reaped, so the group's id (the fit's pid) cannot have been reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(fit.pid, signal.SIGKILL)
        return fit.wait()


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, what the fit's process runs before the fit: it is to get SIGTERM when the
    sweep's process dies, even of SIGKILL, rather than train on as an orphan that a rerun of the
    sweep would resume beside it. Elsewhere, None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: no imports after fork
    sweep_pid = os.getpid()

    def terminate_with_sweep() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != sweep_pid:  # the sweep died before prctl, so no signal would come
            os.kill(os.getpid(), signal.SIGTERM)

    return terminate_with_sweep


def _raise_stopped(signum: int, frame: object) -> None:
    raise SweepStopped(signum)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT (rather than KeyboardInterrupt) raise SweepStopped wherever
    the sweep is, waiting for a fit in the first place."""
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def train(runs: Sequence[SweepRun]) -> list[SweepRun]:
    """Train the runs that have not finished, one after the other; return those that failed.

    A failed run does not stop the others (a sweep's other runs are worth having); SweepStopped
    does, after stopping the running fit."""
    failed = []
    action = {"finished": "finished, skipped", "resumable": "resuming", "new": "training"}
    for index, run in enumerate(runs, 1):
        state = run_state(run.run_dir)
        print(f"[{index}/{len(runs)}] {run.name}: {action[state]}", flush=True)
        if state == "finished":
            continue
        started = time.monotonic()
        try:
            status = launch(run)
        except SweepStopped as stopped:
            fit = "" if stopped.fit_status is None else f", its fit {_ended(stopped.fit_status)}"
            print(f"  stopped by {stopped}{fit}; its output: {run.log}", file=sys.stderr)
            raise
        if status == 0 and run_state(run.run_dir) == "finished":
            print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
        else:
            failed.append(run)
            ended = _ended(status) if status else "exited 0 without completing"
            print(f"  failed: its fit {ended}; its output: {run.log}", file=sys.stderr, flush=True)
    return failed


def run_sweep(
    command: str,
    noun: str,
    runs: Sequence[SweepRun],
    summarise: Callable[[list[SweepRun]], None] | None,
) -> int:
    """Train `runs` (:func:`train`), SIGTERM and SIGINT stopping them, then `summarise` them,
    given those that failed (None: an array task's share, summarised by a later whole run).

    Returns the exit status: 0; 1 where a run failed (each named with its log); 128 + the
    signal's number where one stopped the sweep, with nothing summarised (the same command
    continues it). `command` and `noun` (e.g. "cv", "folds") name them in messages."""
    try:
        with stopped_by_signals():
            failed = train(runs)
            if summarise is not None:
                summarise(failed)
    except SweepStopped as stopped:
        print(
            f"resnext3d {command}: stopped by {stopped}; nothing summarised; the same command "
            "continues",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    if failed:
        print(f"resnext3d {command}: {len(failed)} of {len(runs)} {noun} failed:", file=sys.stderr)
        for run in failed:
            print(f"  {run.name}: {run.log}", file=sys.stderr)
        return 1
    return 0


def _ended(status: int) -> str:
    """How a process with exit status `status` (Popen's: -N for signal N) ended."""
    return f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited {status}"


# Results.


def best_checkpoint_state(run_dir: Path) -> dict[str, Any] | None:
    """The state of the run's ModelCheckpoint that holds a best score (its monitor, best score and
    best checkpoint's path), from the run's last.ckpt; None without one."""
    path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        return None
    checkpoint = read_checkpoint(path)
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            return state
    return None


def best_score(run_dir: Path) -> tuple[str, float] | None:
    """The monitored metric's name and best value, from the run's last.ckpt."""
    state = best_checkpoint_state(run_dir)
    return None if state is None else (state["monitor"], float(state["best_model_score"]))


def std(values: Sequence[float]) -> float:
    """The sample standard deviation; NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_value(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def slurm_array_script(
    name: str, count: int, out_dir: Path, command: Sequence[str], afterwards: str
) -> str:
    """An sbatch script that runs `command` with ``--task <index>`` as each of the `count` tasks
    of a job array; `afterwards` says what to run once every task has ended."""
    return f"""#!/bin/bash
# {name}: {count} runs, one task each. Submit with `sbatch {name}.sbatch`; when every
# task has ended, {afterwards}. A task that is requeued or resubmitted resumes its run.
#SBATCH --job-name={name}
#SBATCH --array=0-{count - 1}
#SBATCH --output={out_dir}/slurm/%A_%a.out
#SBATCH --requeue
# Resources of one run: adjust to the cluster and the experiment.
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
cd {shlex.quote(str(Path.cwd()))}
srun {" ".join(shlex.quote(part) for part in command)} --task "$SLURM_ARRAY_TASK_ID"
"""
