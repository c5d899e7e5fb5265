"""How the benchmark measures: step timings, peak memory, the activations autograd keeps, the CPU
time other processes take meanwhile, and the machine the numbers come from.

Nothing here knows which models are compared (``suites``) or how the numbers are shown
(``report``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightning
import monai
import torch
import torch.nn as nn
from torch.utils.benchmark import Timer

MIB = 2**20
# The instruction sets that decide a CPU's fast paths (vectorized kernels, native bf16 and fp16),
# as torch.cpu.get_capabilities() names them; "AVX512" alone does not say whether bf16 is native.
CPU_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Schedule:
    """How a step is timed: `warmup_steps` untimed steps, then torch.utils.benchmark's
    `adaptive_autorange`, which runs one more untimed step to size its blocks, then timed blocks
    until their interquartile range is within `spread` of their median (four blocks at least)
    or they have taken `budget_s`, which bounds the costly models. A `budget_s` of 0 times a
    single block."""

    warmup_steps: int
    budget_s: float
    spread: float = 0.1


def time_steps(step: Callable[[], None], schedule: Schedule, memory: PeakMemory) -> dict:
    """Warm up, then time `step` and record the peak memory of the steps after the warm-up
    alone, so that one-off costs (oneDNN primitive creation, compilation) stay out of both.

    The warm-up steps keep their own clock: Timer measures the steady state and runs a statement
    before it times it, so it cannot see the one-off cost of a first call, which the report
    shows for torch.compile. The peak is the process's or the CUDA allocator's (PeakMemory):
    Timer measures time alone.
    """
    warmup_s = [one_off_seconds(step) for _ in range(schedule.warmup_steps)]
    memory.reset()
    measurement = step_timer(step).adaptive_autorange(
        threshold=schedule.spread,
        min_run_time=0.0,
        # adaptive_autorange reads 0 as no limit; any positive limit stops after a block.
        max_run_time=max(schedule.budget_s, 1e-9),
    )
    # Seconds per step of each timed block; a block holds one step unless steps are short.
    step_s = list(measurement.times)
    return {"step_s": step_s, "warmup_s": warmup_s, "peak_memory_mib": memory.peak_mib()}


def step_timer(step: Callable[[], None]) -> Timer:
    """A Timer of `step()`: it waits for the accelerator around every block, and keeps torch's
    thread count, where Timer's default of one thread would time a different machine."""
    return Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())


def one_off_seconds(call: Callable[[], object]) -> float:
    """Wall-clock seconds of a single call that no repetition reproduces (a first step, filling
    a cache), waiting for CUDA's kernels to finish."""
    synchronize()
    start = time.perf_counter()
    call()
    synchronize()
    return time.perf_counter() - start


def synchronize() -> None:
    # CUDA kernels run asynchronously: a timing must wait for them to finish.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_flops(forward_macs: int) -> int:
    """Forward, input-gradient and weight-gradient passes cost about one forward each; a MAC is
    two FLOPs. Analytic, because torch 2.13's FlopCounterMode overcounts grouped-convolution
    backward by the number of groups. The first convolution's input needs no gradient, so this
    overcounts a network by a third of its stem's share of the MACs: a sixth for
    resnext50_32x4d at 64³, whose 7×7×7 stem is half its MACs."""
    return 3 * 2 * forward_macs


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


def run_in_fresh_process(function: Callable[..., dict], *args, **kwargs) -> dict:
    """Call `function` in a new process, so that no model's memory, allocator caches or compiled
    kernels affect the next one's numbers, and add to its result the share of the CPUs that
    other processes used meanwhile. The process is forked from a server that imported torch,
    MONAI and resnext3d once (`preload_fresh_processes`), which saves seconds per measurement."""
    context = multiprocessing.get_context("forkserver")
    with OtherProcessesCpu() as others, ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(function, *args, **kwargs).result()
    return {**result, "other_processes_cpu_share": others.share}


def preload_fresh_processes() -> None:
    """Have the fork server import what the measurements need before it forks the first one."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["torch", "lightning", "monai.networks.nets", "resnext3d.data", "resnext3d.models"]
    )


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


def describe_machine() -> dict:
    """What the numbers depend on: processor, its instruction sets, device and versions."""
    device = bench_device()
    capabilities = torch.cpu.get_capabilities()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": [flag for flag in CPU_FLAGS if capabilities.get(flag)],
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
