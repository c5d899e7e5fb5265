"""Attempts to close the gap between grouped and dense 3D convolutions in a train step, each
measured against today's step in the same process.

Every attempt trains resnext50_32x4d (channels-last, fused AdamW, cross-entropy) from the same
initial weights on the same fixed batches for ``--steps`` steps, recording its losses; then the
attempts are timed round after round (each a few steps per round, the rounds interleaved), so
that a slow spell of a shared machine falls on all of them alike. An attempt's losses count as
equal when they stay as close to today's bf16-mixed step's as that step's stay to float32's:
the tolerance bf16 itself brings.

Run from the repository root:
``python -m benchmarks.grouped_conv_attempts [--compile] [--max-autotune]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.measure import describe_machine, synchronize, train_flops
from resnext3d.models import count_macs, create_model
from resnext3d.models.resnext import Bottleneck
from resnext3d.training.performance import (
    cpu_bf16_conv_gradients_are_correct,
    guard_tiny_convolutions,
)

IN_CHANNELS = 4
NUM_CLASSES = 2


class MatmulGroupedConv3d(nn.Conv3d):
    """A grouped Conv3d computed as one batched matrix product per group: the input's 3×3×3
    neighbourhoods gathered (im2col by ``Tensor.unfold``), then contracted with the weights of
    each group (einsum). The same weights, state-dict keys and arithmetic as the convolution."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batch, channels = input.shape[:2]
        groups, kernel, stride = self.groups, self.kernel_size, self.stride
        weight = self.weight
        if torch.is_autocast_enabled(input.device.type):
            dtype = torch.get_autocast_dtype(input.device.type)
            input, weight = input.to(dtype), weight.to(dtype)
        padded = F.pad(input, [p for p in reversed(self.padding) for _ in range(2)])
        patches = padded.unfold(2, kernel[0], stride[0])
        patches = patches.unfold(3, kernel[1], stride[1]).unfold(4, kernel[2], stride[2])
        depth, height, width = patches.shape[2:5]
        # (batch, groups, in per group, D, H, W, kd, kh, kw) × (groups, out per group, in, k...).
        patches = patches.reshape(batch, groups, channels // groups, depth, height, width, -1)
        weight = weight.reshape(groups, -1, channels // groups, kernel[0] * kernel[1] * kernel[2])
        output = torch.einsum("bgcdhwk,gock->bgodhw", patches, weight)
        output = output.reshape(batch, -1, depth, height, width)
        return output.contiguous(memory_format=torch.channels_last_3d)


class MergedGroupsConv3d(nn.Conv3d):
    """A grouped Conv3d computed with `merge` times fewer, wider groups whose weight is
    block-diagonal: the zero blocks add nothing to any sum, so the output and the gradients of
    the real weights are the convolution's, for `merge` times the arithmetic at the kernel's
    (perhaps much higher) rate for wider groups. The parameter keeps its shape and key."""

    merge: int = 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        merged = self.groups // self.merge
        out_per_group, in_per_group = self.out_channels // self.groups, self.weight.shape[1]
        # (merged, merge, out per group, 1, in per group, k...) placed on the diagonal of
        # (merged, merge, out per group, merge, in per group, k...).
        blocks = self.weight.reshape(merged, self.merge, out_per_group, 1, in_per_group, -1)
        eye = torch.eye(self.merge, dtype=self.weight.dtype, device=self.weight.device)
        diagonal = blocks * eye.reshape(1, self.merge, 1, self.merge, 1, 1)
        weight = diagonal.reshape(self.out_channels, self.merge * in_per_group, *self.kernel_size)
        weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(input, weight, None, self.stride, self.padding, self.dilation, merged)


def swap_grouped_convolutions(model: nn.Module, swap: Callable[[nn.Conv3d], None]) -> None:
    for module in model.modules():
        if isinstance(module, Bottleneck) and module.conv2.groups > 1:
            swap(module.conv2)


def as_matmul(conv: nn.Conv3d) -> None:
    conv.__class__ = MatmulGroupedConv3d


def merged_to_width(width: int) -> Callable[[nn.Conv3d], None]:
    """Merge groups until each is at least `width` input channels wide."""

    def swap(conv: nn.Conv3d) -> None:
        merge = 1
        while conv.weight.shape[1] * merge < width and conv.groups % (2 * merge) == 0:
            merge *= 2
        if merge > 1:
            conv.__class__ = MergedGroupsConv3d
            conv.merge = merge

    return swap


@contextlib.contextmanager
def onednn_bf16_fpmath() -> Iterator[None]:
    """oneDNN's implicit bf16 for float32 convolutions (fpmath mode): float32 tensors, bf16
    arithmetic inside the kernel."""
    previous = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.conv.fp32_precision = previous


@dataclass
class Attempt:
    name: str
    bf16: bool = True  # bf16 autocast, as Lightning's bf16-mixed
    prepare: Callable[[nn.Module], None] | None = None
    compile_mode: str | None = None  # torch.compile's mode; "" for the default
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def attempts(compile: bool, max_autotune: bool) -> list[Attempt]:
    listed = [
        Attempt("today: bf16-mixed, eager (reference)"),
        Attempt("float32, eager", bf16=False),
    ]
    if compile:
        listed.append(Attempt("torch.compile (default)", compile_mode=""))
    if max_autotune:
        listed.append(Attempt("torch.compile (max-autotune)", compile_mode="max-autotune"))
    listed += [
        Attempt("grouped 3×3×3 as batched matmul (unfold + einsum)", prepare=as_matmul_all),
        Attempt("groups merged to ≥ 8 channels (block-diagonal)", prepare=merged(8)),
        Attempt("groups merged to ≥ 16 channels (block-diagonal)", prepare=merged(16)),
        Attempt(
            "float32 weights, oneDNN bf16 fpmath, no autocast",
            bf16=False,
            context=onednn_bf16_fpmath,
        ),
    ]
    return listed


def as_matmul_all(model: nn.Module) -> None:
    swap_grouped_convolutions(model, as_matmul)


def merged(width: int) -> Callable[[nn.Module], None]:
    return lambda model: swap_grouped_convolutions(model, merged_to_width(width))


class Trainer:
    """One attempt's model, optimizer and step on the fixed batches."""

    def __init__(self, attempt: Attempt, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        torch.manual_seed(0)
        self.attempt, self.batches = attempt, batches
        model = create_model("resnext50_32x4d", in_channels=IN_CHANNELS, num_classes=NUM_CLASSES)
        model = model.to(memory_format=torch.channels_last_3d)
        if attempt.bf16 and not cpu_bf16_conv_gradients_are_correct():
            guard_tiny_convolutions(model)  # as the CLI's precision plugin does
        if attempt.prepare is not None:
            attempt.prepare(model)
        self.model = model
        self.network = model
        if attempt.compile_mode is not None:
            self.network = torch.compile(model, mode=attempt.compile_mode or None)
        self.initial_state = {k: v.clone() for k, v in model.state_dict().items()}
        self.restart()

    def restart(self) -> None:
        """Back to the initial weights and a fresh optimizer, at the first batch."""
        self.model.load_state_dict(self.initial_state)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), fused=True)
        self.index = 0

    def step(self) -> float:
        inputs, labels = self.batches[self.index % len(self.batches)]
        self.index += 1
        with self.attempt.context():
            self.optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.attempt.bf16):
                logits = self.network(inputs)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            self.optimizer.step()
        return loss.item()


def fixed_batches(count: int, shape: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        inputs = torch.randn(*shape, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (shape[0],), generator=generator)
        batches.append((inputs.contiguous(memory_format=torch.channels_last_3d), labels))
    return batches


def timed_step(trainer: Trainer) -> float:
    synchronize()
    started = time.perf_counter()
    trainer.step()
    synchronize()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grouped_conv_attempts")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="steps whose losses are compared")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes)")
    parser.add_argument("--max-autotune", action="store_true", help="also max-autotune (slow)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    machine = describe_machine()
    shape = (args.batch, IN_CHANNELS, args.size, args.size, args.size)
    print(
        f"# Grouped convolution attempts: resnext50_32x4d train step, {'×'.join(map(str, shape))}"
        f"\n\n- machine: {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{' '.join(machine['cpu_flags'])}; torch {machine['torch']}; {machine['date']}\n"
    )
    with torch.device("meta"):
        meta = create_model("resnext50_32x4d", in_channels=IN_CHANNELS, num_classes=NUM_CLASSES)
        flops = train_flops(count_macs(meta, shape))
    batches = fixed_batches(args.steps, shape)
    trainers, losses, first_step_s = [], {}, {}
    for attempt in attempts(args.compile, args.max_autotune):
        print(f"[attempts] {attempt.name}: {args.steps} steps", file=sys.stderr, flush=True)
        trainer = Trainer(attempt, batches)
        first_step_s[attempt.name] = timed_step(trainer)  # compiling, where it compiles
        trainer.restart()
        losses[attempt.name] = [trainer.step() for _ in range(args.steps)]
        trainers.append(trainer)
    step_s: dict[str, list[float]] = {trainer.attempt.name: [] for trainer in trainers}
    for round_index in range(args.rounds):
        print(f"[attempts] timing round {round_index + 1}", file=sys.stderr, flush=True)
        for trainer in trainers:
            step_s[trainer.attempt.name] += [
                timed_step(trainer) for _ in range(args.steps_per_round)
            ]
    report(trainers, losses, first_step_s, step_s, flops)
    return 0


def report(trainers, losses, first_step_s, step_s, flops) -> None:
    names = [trainer.attempt.name for trainer in trainers]
    reference, float32 = names[0], names[1]
    tolerance = max(abs(a - b) for a, b in zip(losses[reference], losses[float32], strict=True))
    reference_s = statistics.median(step_s[reference])
    print(
        "| attempt | median step s | speed vs today | train GFLOP/s | first step s | "
        "max |Δloss| vs today | losses equal |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        median = statistics.median(step_s[name])
        deviation = max(abs(a - b) for a, b in zip(losses[name], losses[reference], strict=True))
        equal = "–" if name == reference else ("yes" if deviation <= tolerance else "no")
        print(
            f"| {name} | {median:.3f} | {reference_s / median:.2f}× | {flops / median / 1e9:.0f} | "
            f"{first_step_s[name]:.1f} | {deviation:.4f} | {equal} |"
        )
    print(
        f"\nLosses equal: within {tolerance:.4f} of today's (bf16-mixed) over the same steps, the "
        "largest difference between today's losses and float32's. Steps timed in rounds, "
        "interleaved; 'first step' includes compiling."
    )
    print("\nLosses per step:")
    for name in names:
        print(f"- {name}: {' '.join(f'{loss:.4f}' for loss in losses[name])}")


if __name__ == "__main__":
    sys.exit(main())
