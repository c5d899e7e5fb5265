"""What a training run needs besides its task and data: stopping on non-finite values,
reproducible random streams, safe checkpoints and resuming, and schedules fitted to the run."""

from resnext3d.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_checkpoint_task,
    check_checkpoint_weights,
    prepare_resume,
    read_checkpoint,
)
from resnext3d.training.nonfinite import NonFiniteError, NonFiniteGuard
from resnext3d.training.reproducibility import SeedEveryStep
from resnext3d.training.schedules import WarmupCosineLR

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "NonFiniteError",
    "NonFiniteGuard",
    "SeedEveryStep",
    "WarmupCosineLR",
    "check_checkpoint_task",
    "check_checkpoint_weights",
    "prepare_resume",
    "read_checkpoint",
]
