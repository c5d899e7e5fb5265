"""How fast and how lean resnext3d trains, next to MONAI's 3D ResNeXt and ResNet.

Four sections, printed as Markdown tables and written to a JSON file:

1. models: train-step and inference throughput and peak memory of ``resnext50_32x4d`` in its
   default and fastest settings (bf16 where the device has it natively) and of MONAI's
   SEResNeXt50 and resnet50, each as a ratio to MONAI SEResNeXt50 measured in the same run;
2. the GFLOP/s those train steps achieve (analytic MACs) next to a dense Conv3d's;
3. the peak memory that activation checkpointing saves on a large input, with the C library's
   allocator as it is and told to return freed memory;
4. the volumes/s of the BraTS data pipelines on a phantom, cached and uncached.

Run from the repository root: ``python -m benchmarks.bench [--quick] [--batch 2 --size 64]``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning
import monai
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import SEResNeXt50, resnet50

from resnext3d.data import BratsClassificationData, BratsSegmentationData, generate_phantom
from resnext3d.data.datamodule import BratsDataModule
from resnext3d.data.phantom import DEFAULT_SHAPE
from resnext3d.models import count_macs, count_parameters, create_model
from resnext3d.training.performance import (
    cpu_bf16_conv_gradients_are_correct,
    cpu_has_native_bf16,
    guard_tiny_convolutions,
)

IN_CHANNELS = 4  # the four BraTS modalities
NUM_CLASSES = 2
DENSE_CHANNELS = 64
MIB = 2**20
FLOAT32_BYTES = 4
# A parameter, its gradient and AdamW's two moment estimates.
TRAINING_COPIES_OF_WEIGHTS = 4
# Rows that ran while other processes used more of the CPUs than this are flagged as noisy.
NOISY_SHARE = 0.10
NOISY_MARK = " †"

MODEL_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnext50_32x4d": lambda: create_model(
        "resnext50_32x4d", in_channels=IN_CHANNELS, num_classes=NUM_CLASSES
    ),
    "monai_seresnext50": lambda: SEResNeXt50(
        spatial_dims=3, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES
    ),
    # MONAI's default first convolution keeps the full resolution along the first axis, which
    # makes the network about eight times as costly as the others; stride 2 makes it comparable.
    "monai_resnet50_t1": lambda: resnet50(
        spatial_dims=3, n_input_channels=IN_CHANNELS, num_classes=NUM_CLASSES
    ),
    "monai_resnet50_t2": lambda: resnet50(
        spatial_dims=3, n_input_channels=IN_CHANNELS, num_classes=NUM_CLASSES, conv1_t_stride=2
    ),
}


@dataclass(frozen=True)
class Variant:
    """A model in some settings; `key` names it in the JSON, `label` in the tables."""

    key: str
    label: str
    model: str  # a MODEL_BUILDERS key
    channels_last: bool = False
    compiled: bool = False
    grad_checkpointing: bool = False
    bf16: bool = False  # bf16 autocast, as Lightning's "bf16-mixed"


REFERENCE = Variant("monai_seresnext50", "MONAI SEResNeXt50 (reference)", "monai_seresnext50")
OURS_DEFAULT = Variant("resnext50_32x4d", "resnext50_32x4d", "resnext50_32x4d")
OURS_CHANNELS_LAST = replace(
    OURS_DEFAULT, key="resnext50_32x4d_cl", label="resnext50_32x4d", channels_last=True
)
OURS_COMPILED = replace(OURS_CHANNELS_LAST, key="resnext50_32x4d_cl_compiled", compiled=True)
OURS_BF16 = replace(OURS_CHANNELS_LAST, key="resnext50_32x4d_cl_bf16", bf16=True)
REFERENCE_CHANNELS_LAST = replace(
    REFERENCE, key="monai_seresnext50_cl", label="MONAI SEResNeXt50", channels_last=True
)
REFERENCE_BF16 = replace(REFERENCE_CHANNELS_LAST, key="monai_seresnext50_cl_bf16", bf16=True)
COMPARED = (
    REFERENCE,
    REFERENCE_CHANNELS_LAST,
    Variant("monai_resnet50_t1", "MONAI resnet50 conv1_t_stride=1", "monai_resnet50_t1"),
    Variant("monai_resnet50_t2", "MONAI resnet50 conv1_t_stride=2", "monai_resnet50_t2"),
)


@dataclass(frozen=True)
class Schedule:
    """Untimed warm-up steps, then up to `timed_steps` timed ones; timing stops early once the
    timed steps took `budget_s` (at least one always runs), which bounds the costly models."""

    warmup_steps: int
    timed_steps: int
    budget_s: float


@dataclass(frozen=True)
class Settings:
    batch: int = 2
    size: int = 64
    # Every model is measured once per round, the rounds one after the other, so that a slow
    # spell of the machine (other jobs, other virtual machines on the host) spreads over all
    # models instead of falling on one. No round starts once the models have taken
    # rounds_budget_s, which keeps a run on a busy machine from taking twice as long.
    rounds: int = 2
    rounds_budget_s: float = 180.0
    model_schedule: Schedule = Schedule(warmup_steps=2, timed_steps=5, budget_s=10.0)
    dense_schedule: Schedule = Schedule(warmup_steps=1, timed_steps=3, budget_s=10.0)
    checkpoint_batch: int = 1
    checkpoint_size: int = 128
    # One timed step after one warm-up: enough for a peak, and 128³ is the slowest part.
    checkpoint_schedule: Schedule = Schedule(warmup_steps=1, timed_steps=1, budget_s=0.0)
    phantom_cases: int = 16
    phantom_shape: tuple[int, int, int] = DEFAULT_SHAPE
    loader_epochs: int = 3
    compile: bool = True

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, IN_CHANNELS, self.size, self.size, self.size)

    @property
    def checkpoint_shape(self) -> tuple[int, ...]:
        size = self.checkpoint_size
        return (self.checkpoint_batch, IN_CHANNELS, size, size, size)


# For the test: every section at toy sizes, one step each. torch.compile takes half a minute
# whatever the size, so it is left out; BatchNorm needs two values per channel in ResNeXt's last
# stage, hence a checkpointing batch of two at 32³.
QUICK = Settings(
    size=16,
    rounds=1,
    model_schedule=Schedule(warmup_steps=1, timed_steps=1, budget_s=0.0),
    dense_schedule=Schedule(warmup_steps=1, timed_steps=1, budget_s=0.0),
    checkpoint_batch=2,
    checkpoint_size=32,
    phantom_cases=6,
    phantom_shape=(32, 32, 24),
    loader_epochs=1,
    compile=False,
)


# Measuring, inside a fresh process each.


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: a timing must wait for them to finish.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """The most memory in use since `reset`, above what was in use when the meter was made.

    On CUDA that is the caching allocator's peak. On CPU it is the process's peak resident set
    size (VmHWM), which Linux lets a process reset to its current size through
    /proc/self/clear_refs; it counts everything a step touches, oneDNN's scratch buffers too.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = self._in_use()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _process_status_bytes("VmHWM")
        return (peak - self.baseline) / MIB

    def _in_use(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _process_status_bytes("VmRSS")


def _process_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _timed(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def time_steps(
    step: Callable[[], None], device: torch.device, schedule: Schedule, memory: PeakMemory
) -> dict:
    """Warm up, then time `step` and record the peak memory of the timed steps alone, so that
    one-off costs (oneDNN primitive creation, compilation) stay out of both."""
    warmup_s = [_timed(step, device) for _ in range(schedule.warmup_steps)]
    memory.reset()
    step_s: list[float] = []
    while not step_s or (len(step_s) < schedule.timed_steps and sum(step_s) < schedule.budget_s):
        step_s.append(_timed(step, device))
    return {"step_s": step_s, "warmup_s": warmup_s, "peak_memory_mib": memory.peak_mib()}


def summarize(rounds: Sequence[dict], volumes_per_step: int) -> dict:
    """One phase's timings from every round: the median step over all of them, and the highest
    peak."""
    step_s = [duration for timing in rounds for duration in timing["step_s"]]
    median_s = statistics.median(step_s)
    return {
        "volumes_per_s": volumes_per_step / median_s,
        "median_step_s": median_s,
        "peak_memory_mib": max(timing["peak_memory_mib"] for timing in rounds),
        "step_s": step_s,
        "warmup_s": [duration for timing in rounds for duration in timing["warmup_s"]],
    }


def build_model(variant: Variant) -> nn.Module:
    model = MODEL_BUILDERS[variant.model]()
    if variant.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def measure_model(
    variant: Variant,
    input_shape: Sequence[int],
    schedule: Schedule,
    inference: bool = True,
    return_freed_memory: bool = False,
) -> dict:
    """Size and forward MACs of `variant`, then inference (if asked) and train-step timings and
    peak memory, then the activations a forward pass keeps for the backward one.

    Inference runs first: the train step's optimizer state would otherwise count towards it.
    """
    torch.manual_seed(0)
    device = bench_device()
    if return_freed_memory:
        return_freed_memory_to_the_system()
    with torch.device("meta"):
        meta_model = build_model(variant)
        macs = count_macs(meta_model, input_shape)
    memory = PeakMemory(device)
    model = build_model(variant).to(device)
    inputs = torch.randn(*input_shape, device=device)
    labels = torch.arange(input_shape[0], device=device) % NUM_CLASSES
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    if variant.bf16 and tiny_convolutions_need_guarding(device):
        guard_tiny_convolutions(model)  # as the tasks do
    compiled = torch.compile(model) if variant.compiled else model

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            return compiled(inputs)

    result = {"macs": macs, "parameters": count_parameters(meta_model)}

    if inference:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                forward(inputs)

        result["inference"] = time_steps(infer, device, schedule, memory)

    model.train()
    # Fused, as in the experiment configs: on CPU the for-loop AdamW took 65 ms of a 0.5 s step.
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)

    def train_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(forward(inputs), labels).backward()
        optimizer.step()

    result["train"] = time_steps(train_step, device, schedule, memory)
    # The eager model: compiled code would need to recompile under the hooks, and saves the
    # same activations in kind.
    result["saved_activations_mib"] = saved_activations_mib(model, inputs)
    return result


def return_freed_memory_to_the_system() -> None:
    """Make glibc's malloc give large freed blocks back to the system at once.

    By default glibc raises its mmap threshold up to 32 MiB as large blocks are freed, and keeps
    blocks under the threshold in its heap, where the process's peak resident size counts them
    even once freed; a fixed 1 MiB threshold (which also disables the raising) maps every large
    tensor on its own, so that the peak follows the tensors alive at once.
    """
    m_mmap_threshold = -3  # from malloc.h
    if ctypes.CDLL(None).mallopt(m_mmap_threshold, MIB) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: is this glibc?")


def saved_activations_mib(model: nn.Module, inputs: torch.Tensor) -> float:
    """The tensors a forward pass keeps for the backward pass, weights aside: what activation
    checkpointing trades for recomputation. Exact, unlike a process's peak, which also holds
    the weights, optimizer state, the backward pass's temporaries and allocator slack."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved: dict[int, int] = {}  # storage address → bytes, so that views count once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs)
    return sum(saved.values()) / MIB


def measure_dense_conv(input_shape: Sequence[int], channels_last: bool, schedule: Schedule) -> dict:
    """GFLOP/s of a dense 3×3×3 convolution's forward and backward (input and weight gradients),
    three times its forward MACs: what the machine reaches on well-shaped convolution work."""
    torch.manual_seed(0)
    device = bench_device()
    conv = nn.Conv3d(DENSE_CHANNELS, DENSE_CHANNELS, 3, padding=1, bias=False).to(device)
    inputs = torch.randn(*input_shape, device=device)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    inputs.requires_grad_(True)
    macs = count_macs(conv, input_shape)

    def step() -> None:
        conv.zero_grad()
        inputs.grad = None
        # The sum's backward only broadcasts ones: negligible next to the convolution's.
        conv(inputs).sum().backward()

    timing = summarize([time_steps(step, device, schedule, PeakMemory(device))], input_shape[0])
    return {"macs": macs, "gflops_per_s": train_flops(macs) / timing["median_step_s"] / 1e9}


def train_flops(forward_macs: int) -> int:
    """Forward, input-gradient and weight-gradient passes cost about one forward each; a MAC is
    two FLOPs. Analytic, because torch 2.13's FlopCounterMode overcounts grouped-convolution
    backward by the number of groups. The first convolution's input needs no gradient, so this
    overcounts a network by a third of its stem's share of the MACs: a sixth for
    resnext50_32x4d at 64³, whose 7×7×7 stem is half its MACs."""
    return 3 * 2 * forward_macs


def measure_loading(
    data_class: type[BratsDataModule], data_dir: Path, cache: str, settings: Settings
) -> dict:
    """Volumes/s of iterating a data module's train loader, after its cache is built and its
    worker processes have started."""
    data = data_class(
        data_dir=str(data_dir),
        roi_size=(settings.size,) * 3,
        batch_size=settings.batch,
        cache=cache,
    )
    start = time.perf_counter()
    data.setup("fit")  # fills a memory cache
    setup_s = time.perf_counter() - start
    loader = data.train_dataloader()
    _count_volumes(loader)  # the first epoch also starts the persistent workers
    start = time.perf_counter()
    volumes = sum(_count_volumes(loader) for _ in range(settings.loader_epochs))
    seconds = time.perf_counter() - start
    return {
        "volumes_per_s": volumes / seconds,
        "volumes": volumes,
        "seconds": seconds,
        "setup_s": setup_s,
        "num_workers": data.num_workers,
    }


def _count_volumes(loader) -> int:
    return sum(len(batch["image"]) for batch in loader)


# Running the measurements.


def run_in_fresh_process(function: Callable[..., dict], *args, **kwargs) -> dict:
    """Call `function` in a new process, so that no model's memory, allocator caches or compiled
    kernels affect the next one's numbers, and add to its result the share of the CPUs that
    other processes used meanwhile. The process is forked from a server that imported torch,
    MONAI and resnext3d once, which saves seconds per measurement."""
    context = multiprocessing.get_context("forkserver")
    with OtherProcessesCpu() as others, ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(function, *args, **kwargs).result()
    return {**result, "other_processes_cpu_share": others.share}


class OtherProcessesCpu:
    """The share of all CPUs that processes outside this benchmark's process tree used while the
    block ran: other jobs on the machine that make the timings noisy. Linux only."""

    def __enter__(self) -> OtherProcessesCpu:
        self._start = _cpu_seconds()
        return self

    def __exit__(self, *_exception) -> None:
        machine, ours, wall = (
            end - start for end, start in zip(_cpu_seconds(), self._start, strict=True)
        )
        # Clamped: over a short block, whole clock ticks can add up to more than the wall time.
        self.share = min(1.0, max(0.0, (machine - ours) / (wall * os.cpu_count())))


def _cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds the machine and this process tree have used, and the wall clock."""
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    machine = (user + nice + system + irq + softirq + steal) / ticks
    return machine, _process_tree_ticks(os.getpid()) / ticks, time.monotonic()


def _process_tree_ticks(root: int) -> int:
    """User and system ticks of `root` and its descendants, including those they have reaped."""
    parents, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command's closing parenthesis, from the 3rd (state) on.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process has exited meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    children = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children[pid])
    return total


def device_runs_bf16_natively(device: torch.device) -> bool:
    return device.type == "cuda" or cpu_has_native_bf16()


def tiny_convolutions_need_guarding(device: torch.device) -> bool:
    return device.type == "cpu" and not cpu_bf16_conv_gradients_are_correct()


def benchmark_models(settings: Settings) -> dict:
    bf16 = device_runs_bf16_natively(bench_device())
    variants = [OURS_DEFAULT, OURS_CHANNELS_LAST]
    if bf16:
        variants.append(OURS_BF16)
    if settings.compile:  # on top of the fastest settings
        variants.append(replace(OURS_COMPILED, bf16=bf16))
    variants += COMPARED
    if bf16:
        variants.append(REFERENCE_BF16)  # like for like with ours in bf16
    shape = "×".join(map(str, settings.input_shape))
    rounds: dict[Variant, list[dict]] = defaultdict(list)
    started = time.perf_counter()
    for round_index in range(settings.rounds):
        if time.perf_counter() - started > settings.rounds_budget_s:
            progress(
                f"skipping round {round_index + 1}: the models took more than "
                f"{settings.rounds_budget_s:.0f} s already"
            )
            break
        for variant in variants:
            progress(f"round {round_index + 1}/{settings.rounds}: {variant.key}, {shape}")
            rounds[variant].append(
                run_in_fresh_process(
                    measure_model, variant, settings.input_shape, settings.model_schedule
                )
            )
    rows = []
    for variant, measured in rounds.items():
        row = {**asdict(variant), **measured[0]}
        for phase in ("train", "inference"):
            row[phase] = summarize([result[phase] for result in measured], settings.batch)
        row["other_processes_cpu_share"] = max(m["other_processes_cpu_share"] for m in measured)
        rows.append(row)
    reference = next(row for row in rows if row["key"] == REFERENCE.key)
    for row in rows:
        row["ratios"] = {
            f"{phase}_{quantity}": row[phase][field] / reference[phase][field]
            for phase in ("train", "inference")
            for quantity, field in (("throughput", "volumes_per_s"), ("memory", "peak_memory_mib"))
        }
        row["train_gflops_per_s"] = train_flops(row["macs"]) / row["train"]["median_step_s"] / 1e9
    return {
        "input_shape": settings.input_shape,
        "bf16_tiny_convolutions_guarded": tiny_convolutions_need_guarding(bench_device()),
        "reference": REFERENCE.key,
        "rounds": len(rounds[REFERENCE]),
        "rows": rows,
    }


def benchmark_dense_conv(settings: Settings, models: dict) -> dict:
    shape = (settings.batch, DENSE_CHANNELS, settings.size, settings.size, settings.size)
    formats = {}
    for channels_last in (False, True):
        name = memory_format_name(channels_last)
        progress(f"dense Conv3d, {name}")
        formats[name] = run_in_fresh_process(
            measure_dense_conv, shape, channels_last, settings.dense_schedule
        )
    best = max(result["gflops_per_s"] for result in formats.values())
    for row in models["rows"]:
        # The dense convolution runs in float32: a share of it says nothing of bf16 rows.
        row["fraction_of_dense_conv"] = None if row["bf16"] else row["train_gflops_per_s"] / best
    return {"input_shape": shape, "formats": formats, "best_gflops_per_s": best}


def benchmark_checkpointing(settings: Settings) -> dict:
    """Checkpointing off and on; on CPU also with freed memory returned at once, since the peak
    resident size there counts what glibc keeps of freed blocks (CUDA's peak counts tensors)."""
    allocators = ["default"]
    if bench_device().type == "cpu":
        allocators.append("returning")
    result = {"input_shape": settings.checkpoint_shape}
    for allocator in allocators:
        steps = {}
        for enabled in (False, True):
            progress(
                f"grad_checkpointing={enabled}, {allocator} allocator: "
                f"{'×'.join(map(str, settings.checkpoint_shape))}"
            )
            measured = run_in_fresh_process(
                measure_model,
                replace(OURS_DEFAULT, grad_checkpointing=enabled),
                settings.checkpoint_shape,
                settings.checkpoint_schedule,
                inference=False,
                return_freed_memory=allocator == "returning",
            )
            steps[enabled] = {
                **summarize([measured["train"]], settings.checkpoint_batch),
                "saved_activations_mib": measured["saved_activations_mib"],
                "other_processes_cpu_share": measured["other_processes_cpu_share"],
            }
        without, with_ = steps[False], steps[True]
        result[allocator] = {
            "without": without,
            "with": with_,
            "memory_saved_percent": percent_saved(without, with_, "peak_memory_mib"),
            "activations_saved_percent": percent_saved(without, with_, "saved_activations_mib"),
            "time_added_percent": 100 * (with_["median_step_s"] / without["median_step_s"] - 1),
        }
    # The same model every time.
    result["weights_and_optimizer_mib"] = (
        TRAINING_COPIES_OF_WEIGHTS * FLOAT32_BYTES * measured["parameters"] / MIB
    )
    return result


def percent_saved(before: dict, after: dict, field: str) -> float:
    return 100 * (1 - after[field] / before[field])


def benchmark_loading(settings: Settings, train_volumes_per_s: float) -> dict:
    pipelines = {"classification": BratsClassificationData, "segmentation": BratsSegmentationData}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-phantom-") as temporary:
        progress(f"phantom: {settings.phantom_cases} cases of {settings.phantom_shape}")
        data_dir = generate_phantom(
            Path(temporary), settings.phantom_cases, seed=0, shape=settings.phantom_shape
        )
        for name, data_class in pipelines.items():
            for cache in ("memory", "none"):
                progress(f"{name} loader, cache={cache}")
                with OtherProcessesCpu() as others:
                    result = measure_loading(data_class, data_dir, cache, settings)
                results[f"{name}_{cache}"] = {
                    "pipeline": name,
                    "cache": cache,
                    **result,
                    "ratio_to_train_step": result["volumes_per_s"] / train_volumes_per_s,
                    "other_processes_cpu_share": others.share,
                }
    return {
        "phantom_cases": settings.phantom_cases,
        "phantom_shape": settings.phantom_shape,
        "train_volumes_per_s": train_volumes_per_s,
        "pipelines": results,
    }


# Reporting.


def describe_machine() -> dict:
    device = bench_device()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "lightning": lightning.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_format_name(channels_last: bool) -> str:
    return "channels_last_3d" if channels_last else "contiguous"


def settings_name(row: dict) -> str:
    parts = [memory_format_name(row["channels_last"])]
    if row["bf16"]:
        parts.append("bf16-mixed")
    if row["compiled"]:
        parts.append("torch.compile")
    return " + ".join(parts)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    return "\n".join([line(headers), line(["-" * width for width in widths]), *map(line, rows)])


def noisy(result: dict) -> str:
    """A mark for a measurement that other processes may have slowed down."""
    return NOISY_MARK if result["other_processes_cpu_share"] > NOISY_SHARE else ""


def with_ratio(value: float, ratio: float, digits: int) -> str:
    return f"{value:.{digits}f} ({ratio:.2f}×)"


def print_header(machine: dict, settings: Settings) -> None:
    gpu = f" ({machine['gpu']})" if machine["gpu"] else ""
    schedule = settings.model_schedule
    print("# resnext3d benchmark\n")
    print(
        f"- machine: {machine['cpu']}, {machine['cpu_count']} cores "
        f"({machine['torch_threads']} torch threads, {machine['cpu_capability']}), "
        f"{machine['memory_gib']:.0f} GiB RAM; device: {machine['device']}{gpu}"
    )
    print(
        f"- software: Python {machine['python']}, torch {machine['torch']}, "
        f"MONAI {machine['monai']}, Lightning {machine['lightning']}; {machine['date']}"
    )
    print(
        "- steps: fused AdamW, cross-entropy, float32 unless bf16-mixed; each model in a fresh "
        "process, in up to "
        f"{settings.rounds} rounds of {schedule.warmup_steps} warm-up and up to "
        f"{schedule.timed_steps} timed steps ({schedule.budget_s:.0f} s at most); "
        "the median of the timed steps"
    )


def print_models(models: dict, dense: dict) -> None:
    shape = "×".join(map(str, models["input_shape"]))
    rounds = f"{models['rounds']} round{'s' if models['rounds'] > 1 else ''}"
    print(f"\n## Models: input {shape}, ratios to MONAI SEResNeXt50, {rounds}\n")
    print(
        "Throughput in volumes/s (higher is better), peak memory in MiB above the process's "
        "footprint before the model was built (lower is better).\n"
    )
    table = []
    for row in models["rows"]:
        ratios = row["ratios"]
        table.append(
            [
                row["label"] + noisy(row),
                settings_name(row),
                f"{row['macs'] / 1e9:.1f}",
                with_ratio(row["train"]["volumes_per_s"], ratios["train_throughput"], 2),
                with_ratio(row["inference"]["volumes_per_s"], ratios["inference_throughput"], 1),
                with_ratio(row["train"]["peak_memory_mib"], ratios["train_memory"], 0),
                with_ratio(row["inference"]["peak_memory_mib"], ratios["inference_memory"], 0),
                f"{row['train_gflops_per_s']:.0f}",
                "–" if row["bf16"] else f"{100 * row['fraction_of_dense_conv']:.0f}%",
            ]
        )
    headers = [
        "model",
        "settings",
        "GMACs",
        "train vol/s",
        "infer vol/s",
        "train peak MiB",
        "infer peak MiB",
        "train GFLOP/s",
        "of dense conv",
    ]
    print(markdown_table(headers, table))
    if any(row["bf16"] for row in models["rows"]) and models["bf16_tiny_convolutions_guarded"]:
        print(
            "\nbf16-mixed: the convolutions whose input is smaller than their kernel (stage 4 at "
            "64³) run in float32, as in the tasks: this torch computes their bf16 weight "
            "gradients wrongly on this CPU (resnext3d.training.performance.TinyMapSafeConv3d)."
        )
    for row in models["rows"]:
        if row["compiled"]:
            print(
                f"\ntorch.compile: the first train step took {row['train']['warmup_s'][0]:.0f} s "
                f"and the first inference {row['inference']['warmup_s'][0]:.0f} s: compiling, "
                "or loading what earlier runs compiled from the inductor cache."
            )

    dense_shape = "×".join(map(str, dense["input_shape"]))
    print(
        f"\n## Efficiency: a dense Conv3d {DENSE_CHANNELS}→{DENSE_CHANNELS} 3×3×3, forward and "
        f"backward on {dense_shape}\n"
    )
    print(
        "GFLOP/s from analytic MACs × 2 × 3 (forward, input and weight gradients); 'of dense "
        "conv' above is a train step's GFLOP/s as a share of the faster format's.\n"
    )
    rows = [
        [name + noisy(result), f"{result['gflops_per_s']:.0f}"]
        for name, result in dense["formats"].items()
    ]
    print(markdown_table(["memory format", "GFLOP/s"], rows))


ALLOCATOR_NAMES = {"default": "as it is", "returning": "returning freed memory (mallopt)"}


def print_checkpointing(checkpointing: dict) -> None:
    shape = "×".join(map(str, checkpointing["input_shape"]))
    print(f"\n## Activation checkpointing: resnext50_32x4d train step on {shape}\n")
    rows = [
        [
            label + noisy(step),
            ALLOCATOR_NAMES[allocator],
            f"{step['peak_memory_mib']:.0f}",
            f"{step['saved_activations_mib']:.0f}",
            f"{step['median_step_s']:.1f}",
        ]
        for allocator in ALLOCATOR_NAMES
        if allocator in checkpointing
        for label, step in (
            ("off", checkpointing[allocator]["without"]),
            ("on", checkpointing[allocator]["with"]),
        )
    ]
    headers = ["checkpointing", "allocator", "train peak MiB", "saved activations MiB", "step s"]
    print(markdown_table(headers, rows))
    print()
    for allocator, name in ALLOCATOR_NAMES.items():
        if allocator in checkpointing:
            measured = checkpointing[allocator]
            print(
                f"- allocator {name}: checkpointing saves {measured['memory_saved_percent']:.0f}% "
                f"of the peak memory and {measured['activations_saved_percent']:.0f}% of the "
                f"activations kept for the backward pass, for "
                f"{measured['time_added_percent']:+.0f}% step time."
            )
    print(
        f"\nWeights, gradients and AdamW state take "
        f"{checkpointing['weights_and_optimizer_mib']:.0f} MiB of every peak."
    )


def print_loading(loading: dict, train_label: str) -> None:
    cases, shape = loading["phantom_cases"], "×".join(map(str, loading["phantom_shape"]))
    print(f"\n## Data loading: BraTS phantom, {cases} cases of {shape} voxels\n")
    print(
        f"Train loader volumes/s, next to the {loading['train_volumes_per_s']:.2f} volumes/s of "
        f"the {train_label} train step.\n"
    )
    rows = [
        [
            result["pipeline"] + noisy(result),
            result["cache"],
            str(result["num_workers"]),
            f"{result['volumes_per_s']:.1f}",
            f"{result['ratio_to_train_step']:.1f}×",
            f"{result['setup_s']:.1f}",
        ]
        for result in loading["pipelines"].values()
    ]
    headers = ["pipeline", "cache", "workers", "vol/s", "of train step", "setup s"]
    print(markdown_table(headers, rows))


def print_footer(report: dict) -> None:
    print(f"\nTotal time: {report['total_s'] / 60:.1f} min.")
    share = report["other_processes_cpu_share"]
    print(f"Other processes used {100 * share:.0f}% of the CPUs during the run.")
    measurements = [
        *report["models"]["rows"],
        *report["dense_conv"]["formats"].values(),
        *checkpointing_steps(report["checkpointing"]),
        *report["data_loading"]["pipelines"].values(),
    ]
    if any(noisy(measurement) for measurement in measurements):
        print(
            f"{NOISY_MARK.strip()} Other processes used more than {100 * NOISY_SHARE:.0f}% of the "
            "CPUs while this row was measured: its numbers are unreliable, as a busy machine "
            "can slow a step down tenfold."
        )


def checkpointing_steps(checkpointing: dict) -> list[dict]:
    return [
        checkpointing[allocator][step]
        for allocator in ALLOCATOR_NAMES
        if allocator in checkpointing
        for step in ("without", "with")
    ]


def progress(message: str) -> None:
    # Progress goes to stderr, so that stdout holds only the tables.
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_settings(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="toy sizes, one step: for the test")
    parser.add_argument("--batch", type=int, help="volumes per step (default 2)")
    parser.add_argument("--size", type=int, help="voxels per axis of the input (default 64)")
    parser.add_argument(
        "--checkpoint-size", type=int, help="voxels per axis for checkpointing (default 128)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / f"{time.strftime('%Y%m%d-%H%M%S')}.json",
        help="the JSON file of the results (default bench-results/<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    overrides = {"batch": args.batch, "size": args.size, "checkpoint_size": args.checkpoint_size}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_compile:
        settings = replace(settings, compile=False)
    return settings, args.out


def main(argv: Sequence[str] | None = None) -> int:
    settings, out = parse_settings(argv)
    started = time.perf_counter()
    # The measuring processes fork from a server that has imported what this module imports.
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["torch", "lightning", "monai.networks.nets", "resnext3d.data", "resnext3d.models"]
    )
    # Line by line, so that the tables and the progress on stderr interleave in order.
    sys.stdout.reconfigure(line_buffering=True)
    report = {"machine": describe_machine(), "settings": asdict(settings)}
    print_header(report["machine"], settings)
    with OtherProcessesCpu() as others:
        report["models"] = benchmark_models(settings)
        report["dense_conv"] = benchmark_dense_conv(settings, report["models"])
        print_models(report["models"], report["dense_conv"])
        report["checkpointing"] = benchmark_checkpointing(settings)
        print_checkpointing(report["checkpointing"])
        fastest = max(
            (row for row in report["models"]["rows"] if row["model"] == OURS_DEFAULT.model),
            key=lambda row: row["train"]["volumes_per_s"],
        )
        report["data_loading"] = benchmark_loading(settings, fastest["train"]["volumes_per_s"])
        print_loading(report["data_loading"], f"fastest resnext50_32x4d ({settings_name(fastest)})")
    report["other_processes_cpu_share"] = others.share
    report["total_s"] = time.perf_counter() - started
    print_footer(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
