"""What the tasks share: the optimizer and schedule from the config (with layer-wise rates if
asked), the fast paths of the device a run lands on (memory format, compilation), and what
their checkpoints say of the network (its input, its construction)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric

from resnext3d.models.hub import construction_of
from resnext3d.models.pretrained import pretrained_cfg_for_data, pretrained_cfg_of
from resnext3d.training import performance
from resnext3d.training.layer_decay import layer_decay_groups, scale_learning_rates
from resnext3d.training.performance import ChannelsLast
from resnext3d.training.reproducibility import SeedEveryStep

# Settings of how a task runs, not of what it learnt: a checkpoint's hyperparameters, which
# Lightning's CLI merges over the command line's, must not hold them, or `validate --ckpt_path
# ... --model.init_args.threshold 0.4` would silently run with the checkpoint's threshold.
RUNTIME_ARGUMENTS = ("optimizer", "scheduler", "layer_decay", "channels_last", "compile")


def fused_adamw(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The tasks' default optimizer: AdamW with its fused kernel, one kernel for every weight
    (measured faster than the for-loop AdamW: README, "Speed and memory")."""
    return torch.optim.AdamW(parameters, fused=True)


class VolumeTask(L.LightningModule):
    """A LightningModule around one network (``self.network``), 2-D or 3-D.

    Inputs take ``self.memory_format``, chosen for the trainer's device (``configure_model``)
    and the input's dimensions, as each batch arrives on it (``on_after_batch_transfer``). Every
    stage's loss is logged as ``<stage>/loss``, a torchmetrics mean over the epoch.

    Args:
        optimizer: the optimizer, built from the parameters (default: fused AdamW).
        scheduler: an optional learning-rate schedule, stepped every epoch, or every step if it
            says so (``interval = "step"``); one with ``fit_to_run``, such as
            :class:`resnext3d.training.WarmupCosineLR`, is given the run's length in steps.
        channels_last: keep weights and inputs channels-last (``channels_last_3d``); ``"auto"``
            does so on CPU, where it was measured faster (see
            :mod:`resnext3d.training.performance`).
        compile: compile the network with ``torch.compile`` when training starts (in place: the
            state-dict keys stay the same); off by default, as it was measured no faster for
            training on CPU, after about a minute of compiling.
        layer_decay: layer-wise learning-rate decay for fine-tuning: each layer of the network's
            encoder (its stem, then every block) learns at ``layer_decay`` times the rate of the
            layer after it, the head or decoder at the optimizer's rate (the rule:
            :mod:`resnext3d.training.layer_decay`); None: one rate for every weight.

    Checkpoints record the network's ``pretrained_cfg``, filled from the data module (input
    size, spacing, channels, class names), and the arguments that build the network
    (``network_config``), so that ``resnext3d export-weights`` makes a weights folder of them.
    """

    network: nn.Module
    # The metric and mode checkpoints keep the best of, when the config names none.
    checkpoint_monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None,
        channels_last: ChannelsLast,
        compile: bool,
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.layer_decay = layer_decay
        self.scheduler = scheduler
        self.channels_last = channels_last
        self.compile_network = compile
        self.memory_format = torch.contiguous_format  # until a batch arrives on the device
        self.device_channels_last = False  # until configure_model knows the device
        # A torchmetrics mean weighs every volume of every rank once, however batches fall; a NaN
        # loss makes the mean NaN, as it is, instead of being dropped from it.
        self.losses = nn.ModuleDict(
            {f"{s}_loss": MeanMetric(nan_strategy="disable") for s in ("train", "val", "test")}
        )

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        mean = self.losses[f"{stage}_loss"]
        mean.update(loss.detach(), weight=batch_size)
        self.log(f"{stage}/loss", mean, on_step=False, on_epoch=True, batch_size=batch_size)

    def configure_model(self) -> None:
        """The fast paths of the device the trainer put the task on (see
        :mod:`resnext3d.training.performance`): weights in the memory format inputs will take,
        and the network compiled in place (its state-dict keys stay the same) if asked. CPU
        bf16's guards are the precision plugin's
        (:class:`~resnext3d.training.performance.CpuBf16MixedPrecision`)."""
        device = self.trainer.strategy.root_device
        self.device_channels_last = performance.uses_channels_last(self.channels_last, device)
        # Each convolution's weights in the format of its dimensions: the network need not say
        # whether it is 2-D or 3-D (MONAI's UNet and BasicUNet do not).
        for spatial_dims, convert in (
            (2, nn.utils.convert_conv2d_weight_memory_format),
            (3, nn.utils.convert_conv3d_weight_memory_format),
        ):
            convert(self, performance.memory_format(self.device_channels_last, spatial_dims))
        if self.compile_network:
            self.network.compile()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
            image = batch["image"]  # (batch, channels, *spatial)
            self.memory_format = performance.memory_format(
                self.device_channels_last, image.ndim - 2
            )
            batch["image"] = image.contiguous(memory_format=self.memory_format)
        return batch

    def configure_optimizers(self):
        if self.layer_decay is None:
            optimizer = self.optimizer(self.parameters())
        else:
            optimizer = self.optimizer(layer_decay_groups(self, self.layer_decay))
            scale_learning_rates(optimizer)
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        interval = getattr(scheduler, "interval", "epoch")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }

    def on_train_start(self) -> None:
        # Here, not in configure_optimizers: asking for the run's length there builds the
        # training loader before a resumed run has restored its epoch, and its first epoch would
        # then repeat the order of epoch 0.
        for config in self.trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "fit_to_run"):  # e.g. WarmupCosineLR
                config.scheduler.fit_to_run(self.trainer.estimated_stepping_batches)

    def configure_callbacks(self) -> list[L.Callback]:
        return [SeedEveryStep()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        cfg = pretrained_cfg_for_data(pretrained_cfg_of(self.network), datamodule)
        checkpoint["pretrained_cfg"] = cfg.to_dict()
        # A network that does not record its construction (a MONAI one) has none: the run's
        # config.yaml builds it.
        with contextlib.suppress(TypeError):
            checkpoint["network_config"] = construction_of(self.network, verify=False)
