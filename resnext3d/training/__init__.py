"""What a training run needs besides its task and data: stopping on non-finite values,
reproducible random streams, safe checkpoints and resuming, schedules fitted to the run, the
device's fast paths, a resumable CSV log, and what runs write besides checkpoints (predictions,
figures: :mod:`resnext3d.training.callbacks`)."""

from resnext3d.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_checkpoint_task,
    check_checkpoint_weights,
    prepare_resume,
    read_checkpoint,
)
from resnext3d.training.loggers import ResumableCSVLogger
from resnext3d.training.nonfinite import NonFiniteError, NonFiniteGuard
from resnext3d.training.reproducibility import SeedEveryStep
from resnext3d.training.schedules import WarmupCosineLR

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "NonFiniteError",
    "NonFiniteGuard",
    "ResumableCSVLogger",
    "SeedEveryStep",
    "WarmupCosineLR",
    "check_checkpoint_task",
    "check_checkpoint_weights",
    "prepare_resume",
    "read_checkpoint",
]
