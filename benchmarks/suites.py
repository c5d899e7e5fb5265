"""What the benchmark compares, and in which settings: resnext50_32x4d next to MONAI's 3D
SEResNeXt50 and resnet50, a dense Conv3d as the machine's attainable rate, activation
checkpointing on a large input, and the BraTS data pipelines on a phantom.

Each suite runs its measurements (``measure``) and hands the numbers to ``report`` for the
ratios, so that every ratio is taken in one place and against the same run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import SEResNeXt50, resnet50

from benchmarks.measure import (
    MIB,
    OtherProcessesCpu,
    PeakMemory,
    Schedule,
    bench_device,
    one_off_seconds,
    return_freed_memory_to_the_system,
    run_in_fresh_process,
    saved_activations_mib,
    step_timer,
    time_steps,
    train_flops,
)
from benchmarks.report import (
    compare_checkpointing,
    compare_loading,
    compare_models,
    compare_with_dense_conv,
    memory_format_name,
    summarize,
)
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
FLOAT32_BYTES = 4
# A parameter, its gradient and AdamW's two moment estimates.
TRAINING_COPIES_OF_WEIGHTS = 4

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
class Settings:
    batch: int = 2
    size: int = 64
    # Every model is measured once per round, the rounds one after the other, so that a slow
    # spell of the machine (other jobs, other virtual machines on the host) spreads over all
    # models instead of falling on one. No round starts once the models have taken
    # rounds_budget_s, which keeps a run on a busy machine from taking twice as long.
    rounds: int = 2
    rounds_budget_s: float = 180.0
    model_schedule: Schedule = Schedule(warmup_steps=2, budget_s=10.0)
    dense_schedule: Schedule = Schedule(warmup_steps=1, budget_s=10.0)
    checkpoint_batch: int = 1
    checkpoint_size: int = 128
    # One timed step after the warm-ups: enough for a peak, and 128³ is the slowest part.
    checkpoint_schedule: Schedule = Schedule(warmup_steps=1, budget_s=0.0)
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
    model_schedule=Schedule(warmup_steps=1, budget_s=0.0),
    dense_schedule=Schedule(warmup_steps=1, budget_s=0.0),
    checkpoint_batch=2,
    checkpoint_size=32,
    phantom_cases=6,
    phantom_shape=(32, 32, 24),
    loader_epochs=1,
    compile=False,
)


# Measurements, each run inside a fresh process (measure.run_in_fresh_process).


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
        guard_tiny_convolutions(model)  # as the CLI's precision plugin does
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

        result["inference"] = time_steps(infer, schedule, memory)

    model.train()
    # Fused, as in the experiment configs: on CPU the for-loop AdamW took 65 ms of a 0.5 s step.
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)

    def train_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(forward(inputs), labels).backward()
        optimizer.step()

    result["train"] = time_steps(train_step, schedule, memory)
    # The eager model: compiled code would need to recompile under the hooks, and saves the
    # same activations in kind.
    result["saved_activations_mib"] = saved_activations_mib(model, inputs)
    return result


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

    timing = summarize([time_steps(step, schedule, PeakMemory(device))], input_shape[0])
    return {"macs": macs, "gflops_per_s": train_flops(macs) / timing["median_step_s"] / 1e9}


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
    setup_s = one_off_seconds(lambda: data.setup("fit"))  # fills a memory cache
    loader = data.train_dataloader()
    volumes_per_epoch: list[int] = []
    # Timer keeps no return value: each epoch notes how many volumes it delivered.
    timer = step_timer(lambda: volumes_per_epoch.append(_count_volumes(loader)))
    # Whole epochs, after timeit's own untimed ones, the first of which starts the workers.
    seconds = timer.timeit(number=settings.loader_epochs).raw_times[0]
    volumes = sum(volumes_per_epoch[-settings.loader_epochs :])
    return {
        "volumes_per_s": volumes / seconds,
        "volumes": volumes,
        "seconds": seconds,
        "setup_s": setup_s,
        "num_workers": data.num_workers,
    }


def _count_volumes(loader) -> int:
    return sum(len(batch["image"]) for batch in loader)


def device_runs_bf16_natively(device: torch.device) -> bool:
    return device.type == "cuda" or cpu_has_native_bf16()


def tiny_convolutions_need_guarding(device: torch.device) -> bool:
    return device.type == "cpu" and not cpu_bf16_conv_gradients_are_correct()


# The suites, each measurement in a fresh process.


def model_variants(settings: Settings) -> list[Variant]:
    """Ours in its default and faster settings, then MONAI's; bf16 where the device has it."""
    bf16 = device_runs_bf16_natively(bench_device())
    variants = [OURS_DEFAULT, OURS_CHANNELS_LAST]
    if bf16:
        variants.append(OURS_BF16)
    if settings.compile:  # on top of the fastest settings
        variants.append(replace(OURS_COMPILED, bf16=bf16))
    variants += COMPARED
    if bf16:
        variants.append(REFERENCE_BF16)  # like for like with ours in bf16
    return variants


def benchmark_models(settings: Settings) -> dict:
    variants = model_variants(settings)
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
    rows = [
        {**asdict(variant), **measured[0]} | combine_rounds(measured, settings.batch)
        for variant, measured in rounds.items()
    ]
    return {
        "input_shape": settings.input_shape,
        "bf16_tiny_convolutions_guarded": tiny_convolutions_need_guarding(bench_device()),
        "reference": REFERENCE.key,
        "rounds": len(rounds[REFERENCE]),
        "rows": compare_models(rows, REFERENCE.key),
    }


def combine_rounds(measured: Sequence[dict], batch: int) -> dict:
    """One model's phases over every round, and the busiest round's share of other processes."""
    combined = {
        phase: summarize([result[phase] for result in measured], batch)
        for phase in ("train", "inference")
    }
    combined["other_processes_cpu_share"] = max(m["other_processes_cpu_share"] for m in measured)
    return combined


def benchmark_dense_conv(settings: Settings, models: dict) -> dict:
    shape = (settings.batch, DENSE_CHANNELS, settings.size, settings.size, settings.size)
    formats = {}
    for channels_last in (False, True):
        name = memory_format_name(channels_last)
        progress(f"dense Conv3d, {name}")
        formats[name] = run_in_fresh_process(
            measure_dense_conv, shape, channels_last, settings.dense_schedule
        )
    return compare_with_dense_conv(models["rows"], shape, formats)


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
        result[allocator] = compare_checkpointing(without=steps[False], with_=steps[True])
    # The same model every time.
    result["weights_and_optimizer_mib"] = (
        TRAINING_COPIES_OF_WEIGHTS * FLOAT32_BYTES * measured["parameters"] / MIB
    )
    return result


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
                    "other_processes_cpu_share": others.share,
                }
    return {
        "phantom_cases": settings.phantom_cases,
        "phantom_shape": settings.phantom_shape,
        "train_volumes_per_s": train_volumes_per_s,
        "pipelines": compare_loading(results, train_volumes_per_s),
    }


def progress(message: str) -> None:
    # Progress goes to stderr, so that stdout holds only the tables.
    print(f"[bench] {message}", file=sys.stderr, flush=True)
