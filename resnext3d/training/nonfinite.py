"""Stop (or skip) at the first NaN or infinite loss or gradient, before it reaches the weights."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteError(RuntimeError):
    """A loss, gradient or weight became NaN or infinite; the message says where."""


class NonFiniteGuard(L.Callback):
    """Checks every training loss and gradient, every validation loss and every saved weight.

    A non-finite value stops the run with a :class:`NonFiniteError` naming the epoch, the step
    and the batch's cases, before the optimizer applies it: the checkpoints already written
    keep finite weights, and no checkpoint is written with non-finite ones. With ``action:
    skip``, a batch whose loss or gradients are not finite is dropped instead (its gradients are
    discarded, so the optimizer leaves every weight and its state as they were, and the norms'
    running statistics are restored to their values before the batch), counted in
    ``train/skipped_batches``, and the run stops once more than ``max_skipped_batches`` were.

    Under 16-bit mixed precision the gradient scaler already skips steps whose gradients
    overflowed (and lowers its scale), so gradients are checked only without one.

    Args:
        action: "stop" the run or "skip" the batch.
        max_skipped_batches: with "skip", the number of skipped batches a run tolerates.
    """

    def __init__(
        self, action: Literal["stop", "skip"] = "stop", max_skipped_batches: int = 10
    ) -> None:
        self.action = action
        self.max_skipped_batches = max_skipped_batches
        self.skipped_batches = 0
        self._problem: str | None = None
        self._case_ids: list[str] = []
        self._buffers: list[torch.Tensor] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # Gradients accumulated over several batches are stepped once: name all their cases.
        self._case_ids += _case_ids(batch)
        if self.action == "skip" and self._buffers is None:
            # The forward pass of a batch that is then skipped has already moved the norms'
            # running statistics, NaN included: they are put back as they were.
            self._buffers = [b.detach().clone() for b in _float_buffers(pl_module)]

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if self._problem is None and not torch.isfinite(loss.detach()).all():
            self._problem = f"training loss {loss.detach().float().mean().item()}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._problem is None and not _has_grad_scaler(trainer):
            norm = _gradient_norm(pl_module)
            if not torch.isfinite(norm):
                self._problem = f"gradient norm {norm.item()}"
        # Every rank must take the same decision: one rank's NaN reaches all by the all-reduce.
        if trainer.strategy.reduce_boolean_decision(self._problem is not None, all=False):
            self._stop_or_skip(trainer, pl_module, optimizer)
        self._problem, self._case_ids, self._buffers = None, [], None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.action == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped_batches), sync_dist=False)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        if loss is not None and not torch.isfinite(loss).all():
            stage = "sanity check" if trainer.sanity_checking else "validation"
            raise NonFiniteError(
                f"{stage} loss is {loss.float().mean().item()} at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step}, on case(s) {', '.join(_case_ids(batch)) or '?'}: "
                "look for NaN or infinite voxels in their images (resnext3d check-data), or, if "
                "the weights diverged, lower the learning rate"
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        broken = non_finite_weights(checkpoint["state_dict"])
        if broken:
            raise NonFiniteError(
                f"{len(broken)} weights are not finite at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step} (e.g. {', '.join(broken[:3])}); no checkpoint was written"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_batches = state_dict.get("skipped_batches", 0)

    def _stop_or_skip(self, trainer, pl_module, optimizer) -> None:
        where = (
            f"{self._problem or 'non-finite value on another rank'} at epoch "
            f"{trainer.current_epoch}, step {trainer.global_step}, in the batch of case(s) "
            f"{', '.join(self._case_ids) or '?'}"
        )
        if self.action == "skip" and self.skipped_batches < self.max_skipped_batches:
            self.skipped_batches += 1
            optimizer.zero_grad(set_to_none=True)  # optimizers skip weights without gradients
            for buffer, saved in zip(_float_buffers(pl_module), self._buffers or [], strict=True):
                buffer.copy_(saved)
            rank_zero_warn(
                f"skipped batch {self.skipped_batches} of at most {self.max_skipped_batches}: "
                f"{where}"
            )
            return
        reason = (
            f"after {self.skipped_batches} skipped batches (max_skipped_batches)"
            if self.action == "skip"
            else "before the optimizer step"
        )
        raise NonFiniteError(
            f"stopped {reason}: {where}. The checkpoints already written hold finite weights. "
            "Check these cases' images (resnext3d check-data), lower the learning rate, or skip "
            "such batches with --nonfinite.action skip"
        )


def non_finite_weights(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors of `state_dict` with a NaN or an infinity."""
    return [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]


def _case_ids(batch) -> list[str]:
    return [str(case) for case in batch.get("case_id", [])] if isinstance(batch, dict) else []


def _has_grad_scaler(trainer: L.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def _float_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    return [buffer for buffer in module.buffers() if buffer.is_floating_point()]


def _gradient_norm(module: torch.nn.Module) -> torch.Tensor:
    gradients = [p.grad for p in module.parameters() if p.grad is not None]
    if not gradients:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(gradients)
