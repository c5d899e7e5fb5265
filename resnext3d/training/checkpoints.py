"""Checkpoints that are written whole or not at all, read back safely, and described clearly
when they do not fit the run they are given to; a ``last.ckpt`` that is always the latest state;
resuming a run in its own directory."""

from __future__ import annotations

import csv
import pickle
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resnext3d.files import PARTIAL_SUFFIX, atomic_file, describe_os_error
from resnext3d.training.nonfinite import non_finite_weights

LAST_CHECKPOINT = "checkpoints/last.ckpt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run; the message names the file and the reason."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint whole or not at all (:func:`resnext3d.files.atomic_file`), so a
    process killed while saving leaves the previous checkpoint intact and never a truncated one,
    and removes what such a process left at the next save; reads
    checkpoints with ``weights_only=True`` (tensors and plain Python values, no code).

    Lightning's own save writes through a temporary file in the system's temp folder, which a
    kill leaves there, and moves it, which is a copy when the run directory is on another disk.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".*{PARTIAL_SUFFIX}"):
            stale.unlink(missing_ok=True)  # left by a writer that was killed
        try:
            with atomic_file(path) as file:
                torch.save(checkpoint, file)
        except (OSError, RuntimeError) as error:
            # torch.save reports a failed write as "RuntimeError: [enforce fail at
            # inline_container.cc...] file write failed": say which file and why.
            raise CheckpointError(
                f"{path}: the checkpoint could not be written ({describe_os_error(error, path)}); "
                "the checkpoints already in its folder are unchanged"
            ) from error

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = True
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location, weights_only=weights_only)


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` (``save_last``) is the latest state
    after every epoch, whatever the monitored metric did, and the state the run reached when a
    signal stopped it (SIGTERM from ``kill`` or a scheduler, SIGINT from Ctrl-C).

    Lightning 2.6.6 writes ``last.ckpt`` only in an epoch whose monitored metric improved (its
    ``on_validation_end``): a run whose last epochs do not improve would end with its final
    weights nowhere on disk, and resume from an older epoch. Its name is Lightning's, so that
    checkpoints keep one callback-state key across versions.
    """

    _last_saved_at_step: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        signal_name = {SIGTERMException: "SIGTERM", KeyboardInterrupt: "SIGINT"}.get(
            type(exception)
        )
        if signal_name and trainer.state.fn == "fit" and self.save_last:
            self._save_last_unless_saved(trainer)
            rank_zero_info(
                f"stopped by {signal_name} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}: this state is saved in {self.last_model_path}"
            )

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_at_step = trainer.global_step

    def _save_last_unless_saved(self, trainer: L.Trainer) -> None:
        if (
            self.save_last
            and self._last_saved_at_step != trainer.global_step
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", weights_only: bool | None = True
) -> dict[str, Any]:
    """Load a checkpoint, raising a CheckpointError that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes): a copy or save failed")
    try:
        # Memory-mapped: only the tensors that are used are read.
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=weights_only, mmap=True
        )
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({error})") from error
        unsafe = next((line for line in str(error).splitlines() if "GLOBAL" in line), "")
        raise CheckpointError(
            f"{path}: the checkpoint holds objects other than tensors and plain Python values, "
            f"which are not loaded, as loading them could run code ({unsafe.strip()})"
        ) from error
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, perhaps truncated ({error})"
        ) from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (it has no state_dict)")
    return dict(checkpoint)


def describe_checkpoint(checkpoint: Mapping[str, Any]) -> str:
    """What a checkpoint holds, e.g. "a VolumeClassifier (320 tensors, 25.9 M values) after
    epoch 3"."""
    task = checkpoint.get("hyper_parameters", {}).get("_class_path", "an unknown task")
    task = task.rsplit(".", 1)[-1]
    state = checkpoint["state_dict"]
    values = sum(tensor.numel() for tensor in state.values()) / 1e6
    epoch = checkpoint.get("epoch")
    after = f" after epoch {epoch}" if epoch is not None else ""
    return f"a {task} ({len(state)} tensors, {values:.1f} M values){after}"


def check_checkpoint_task(
    path: str | Path, checkpoint: Mapping[str, Any], task_class_path: str
) -> None:
    """Raise a CheckpointError when `checkpoint` was written by another task than
    `task_class_path` (e.g. a classifier's given to a segmentation run)."""
    saved_task = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if saved_task is not None and saved_task != task_class_path:
        raise CheckpointError(
            f"{path} holds {describe_checkpoint(checkpoint)}, but this run builds a "
            f"{task_class_path.rsplit('.', 1)[-1]}: pass a checkpoint of that task, or the "
            "experiment config it was trained with"
        )


def check_checkpoint_weights(
    path: str | Path, checkpoint: Mapping[str, Any], model: torch.nn.Module
) -> None:
    """Raise a CheckpointError when the weights in `checkpoint` do not fit `model`, naming
    the first that differ, or are not all finite."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items()}
    missing, unexpected = sorted(expected.keys() - saved), sorted(saved.keys() - expected)
    # Convolution and linear weights first: their shapes tell the architecture apart.
    reshaped = sorted(
        (name for name in expected.keys() & saved if expected[name] != saved[name]),
        key=lambda name: (len(saved[name]) < 2, name),
    )
    if missing or unexpected or reshaped:
        examples = [
            *(f"{name} {saved[name]} where the model has {expected[name]}" for name in reshaped),
            *(f"{name} missing" for name in missing),
            *(f"{name} unexpected" for name in unexpected),
        ]
        raise CheckpointError(
            f"{path} holds {describe_checkpoint(checkpoint)} whose weights do not fit this "
            f"run's model ({len(reshaped)} differ in shape, {len(missing)} missing, "
            f"{len(unexpected)} unexpected; e.g. {'; '.join(examples[:3])}): was it trained "
            "with another encoder (preset, layers, cardinality, base_width) or decoder?"
        )
    broken = non_finite_weights(checkpoint["state_dict"])
    if broken:
        raise CheckpointError(
            f"{path} holds {describe_checkpoint(checkpoint)} with {len(broken)} weights that are "
            f"NaN or infinite (e.g. {', '.join(broken[:3])}): its predictions would be too; "
            "use an earlier checkpoint of the run"
        )


def resume_files(run_dir: str | Path) -> tuple[Path, Path]:
    """The config and the last checkpoint of `run_dir`, or a CheckpointError saying why it
    cannot be resumed."""
    run_dir = Path(run_dir)
    config, last = run_dir / CONFIG_FILE, run_dir / LAST_CHECKPOINT
    if not config.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    if not last.is_file():
        raise CheckpointError(
            f"{run_dir}: no {LAST_CHECKPOINT}: the run ended before its first checkpoint; "
            "start it again instead"
        )
    return config, last


def best_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint of `run_dir` with the best monitored score, as its last checkpoint records
    it; the last checkpoint where none was kept. Found by name in the run's checkpoints folder,
    so a run directory that was moved or copied still works."""
    _, last = resume_files(run_dir)
    states = read_checkpoint(last).get("callbacks", {})
    best = next(
        (s.get("best_model_path") for k, s in states.items() if k.startswith("ModelCheckpoint")),
        None,
    )
    candidate = last.parent / Path(best).name if best else last
    return candidate if candidate.is_file() else last


def prepare_resume(run_dir: str | Path) -> tuple[Path, Path]:
    """Put `run_dir` in order to be resumed; returns its config and its last checkpoint.

    The config is kept as ``config.<n>.yaml`` before the resumed run writes its own, and the
    rows of ``metrics.csv`` from epochs after the last checkpoint's, which the resumed run logs
    again, are dropped.
    """
    config, last = resume_files(run_dir)
    epoch = read_checkpoint(last).get("epoch")
    number = 1
    while (kept := config.with_name(f"config.{number}.yaml")).exists():
        number += 1
    shutil.copy2(config, kept)
    if epoch is not None:
        _drop_metrics_after(config.with_name(METRICS_FILE), epoch)
    return config, last


def _drop_metrics_after(metrics: Path, epoch: int) -> None:
    if not metrics.is_file():
        return
    with metrics.open(newline="") as file:
        reader = csv.DictReader(file)
        columns, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("epoch") or float(row["epoch"]) <= epoch]
    if len(kept) == len(rows):
        return
    with atomic_file(metrics, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(kept)
