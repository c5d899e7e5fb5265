"""What a training run needs besides its task and data: stopping on non-finite values,
reproducible random streams, safe checkpoints and resuming, schedules fitted to the run, the
device's fast paths, a resumable CSV log, and what runs write besides checkpoints (predictions,
figures: :mod:`resnext3d.training.callbacks`)."""

from resnext3d.training.checkpoints import (
    CONFIG_FILE,
    AtomicCheckpointIO,
    CheckpointError,
    ModelCheckpoint,
    best_checkpoint,
    check_checkpoint_task,
    check_checkpoint_weights,
    prepare_resume,
    read_checkpoint,
    resume_files,
)
from resnext3d.training.loggers import ResumableCSVLogger
from resnext3d.training.nonfinite import NonFiniteError, NonFiniteGuard
from resnext3d.training.reproducibility import SeedEveryStep
from resnext3d.training.schedules import WarmupCosineLR

__all__ = [
    "CONFIG_FILE",
    "AtomicCheckpointIO",
    "CheckpointError",
    "ModelCheckpoint",
    "NonFiniteError",
    "NonFiniteGuard",
    "ResumableCSVLogger",
    "SeedEveryStep",
    "WarmupCosineLR",
    "best_checkpoint",
    "check_checkpoint_task",
    "check_checkpoint_weights",
    "prepare_resume",
    "read_checkpoint",
    "resume_files",
]
