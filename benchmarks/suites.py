"""What the benchmark compares, and in which settings: resnext50_32x4d next to MONAI's 3D
SEResNeXt50 and resnet50, dense and grouped Conv3d as the machine's attainable rates, where a
train step's time goes (profiler), activation checkpointing on a large input, the BraTS data
pipelines on a phantom, and (on request) the equal-complexity C series.

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
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import SEResNeXt50, resnet50

from benchmarks.conv_rates import conv_settings, grouped_cases_of, issue_cases, measure_rates
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
)
from benchmarks.report import (
    compare_cardinality,
    compare_checkpointing,
    compare_loading,
    compare_models,
    compare_with_conv_rates,
    summarize,
)
from benchmarks.step_profile import profile_step
from resnext3d.data import BratsClassificationData, BratsSegmentationData, generate_phantom
from resnext3d.data.datamodule import BratsDataModule
from resnext3d.data.phantom import DEFAULT_SHAPE
from resnext3d.models import count_macs, count_parameters, create_model
from resnext3d.models.complexity import complexity_table
from resnext3d.training.performance import (
    cpu_bf16_conv_gradients_are_correct,
    cpu_has_native_bf16,
    guard_tiny_convolutions,
)

IN_CHANNELS = 4  # the four BraTS modalities
NUM_CLASSES = 2
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
    # C and d replacing the preset's (the cardinality series); None keeps the preset's.
    cardinality: int | None = None
    base_width: int | None = None


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
    # The issue's pair of convolutions: 4×256×16³ maps, 32 groups of 8 for the grouped one.
    conv_batch: int = 4
    conv_channels: int = 256
    conv_size: int = 16
    conv_groups: int = 32
    conv_schedule: Schedule = Schedule(warmup_steps=1, budget_s=1.0)
    profile_warmup_steps: int = 2
    # The C series: "also" after the other sections, "only" alone (--cardinality [only]).
    cardinality: Literal["also", "only"] | None = None
    cardinality_warmup_steps: int = 2
    cardinality_rounds: int = 3
    cardinality_steps_per_round: int = 1
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
    conv_batch=1,
    conv_size=8,
    conv_schedule=Schedule(warmup_steps=1, budget_s=0.0),
    profile_warmup_steps=1,
    cardinality_warmup_steps=1,
    cardinality_rounds=1,
    checkpoint_batch=2,
    checkpoint_size=32,
    phantom_cases=6,
    phantom_shape=(32, 32, 24),
    loader_epochs=1,
    compile=False,
)


# Measurements, each run inside a fresh process (measure.run_in_fresh_process).


def build_model(variant: Variant) -> nn.Module:
    if variant.cardinality is None:
        model = MODEL_BUILDERS[variant.model]()
    else:
        model = create_model(
            variant.model,
            in_channels=IN_CHANNELS,
            num_classes=NUM_CLASSES,
            cardinality=variant.cardinality,
            base_width=variant.base_width,
        )
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
    device = bench_device()
    if return_freed_memory:
        return_freed_memory_to_the_system()
    with torch.device("meta"):
        meta_model = build_model(variant)
        macs = count_macs(meta_model, input_shape)
    memory = PeakMemory(device)
    model, inputs, forward = prepare_model(variant, input_shape, device)
    result = {"macs": macs, "parameters": count_parameters(meta_model)}

    if inference:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                forward(inputs)

        result["inference"] = time_steps(infer, schedule, memory)

    result["train"] = time_steps(train_step_of(model, inputs, forward), schedule, memory)
    # The eager model: compiled code would need to recompile under the hooks, and saves the
    # same activations in kind.
    result["saved_activations_mib"] = saved_activations_mib(model, inputs)
    return result


def prepare_model(
    variant: Variant, input_shape: Sequence[int], device: torch.device
) -> tuple[nn.Module, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """`variant` on `device` in its settings, a random input, and its forward pass (compiled,
    under bf16 autocast, as the variant asks), from a fixed seed."""
    torch.manual_seed(0)
    model = build_model(variant).to(device)
    inputs = torch.randn(*input_shape, device=device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    if variant.bf16 and tiny_convolutions_need_guarding(device):
        guard_tiny_convolutions(model)  # as the CLI's precision plugin does
    compiled = torch.compile(model) if variant.compiled else model
    return model, inputs, autocast_forward(compiled, device, variant.bf16)


def autocast_forward(
    network: Callable[[torch.Tensor], torch.Tensor], device: torch.device, bf16: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`network`'s forward pass, under bf16 autocast (Lightning's "bf16-mixed") if `bf16`."""

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return network(inputs)

    return forward


def train_step_of(
    model: nn.Module, inputs: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[], None]:
    """A train step of `model` on `inputs`: cross-entropy, backward, fused AdamW."""
    model.train()
    labels = torch.arange(inputs.shape[0], device=inputs.device) % NUM_CLASSES
    # Fused, as in the experiment configs: on CPU the for-loop AdamW took 65 ms of a 0.5 s step.
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)

    def train_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(forward(inputs), labels).backward()
        optimizer.step()

    return train_step


def profile_model(variant: Variant, input_shape: Sequence[int], warmup_steps: int) -> dict:
    """Where one train step of `variant` spends its time, after `warmup_steps` steps."""
    device = bench_device()
    model, inputs, forward = prepare_model(variant, input_shape, device)
    step = train_step_of(model, inputs, forward)
    for _ in range(warmup_steps):
        step()
    return profile_step(step, device)


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


def benchmark_conv_rates(settings: Settings, models: dict) -> dict:
    """The issue's dense and grouped convolutions and every grouped convolution of
    resnext50_32x4d at the benchmark's input, in every setting the device runs natively, all in
    one fresh process; every model row's train step as a fraction of them."""
    with torch.device("meta"):
        ours = build_model(OURS_DEFAULT)
    cases = issue_cases(
        settings.conv_batch, settings.conv_channels, settings.conv_size, settings.conv_groups
    )
    cases += grouped_cases_of(ours, settings.input_shape)
    conv_settings_ = conv_settings(device_runs_bf16_natively(bench_device()))
    progress(f"Conv3d rates: {len(cases)} convolutions × {len(conv_settings_)} settings")
    measured = run_in_fresh_process(measure_rates, cases, conv_settings_, settings.conv_schedule)
    dense, grouped = cases[0].label, cases[1].label
    return compare_with_conv_rates(models["rows"], measured, dense, grouped)


def benchmark_step_profile(settings: Settings) -> dict:
    """Where a train step of resnext50_32x4d goes, channels-last in float32 and (where native)
    bf16-mixed, each in a fresh process."""
    variants = [OURS_CHANNELS_LAST]
    if device_runs_bf16_natively(bench_device()):
        variants.append(OURS_BF16)
    profiles = {}
    for variant in variants:
        progress(f"profiling a train step: {variant.key}")
        profiles[variant.key] = {
            **asdict(variant),
            **run_in_fresh_process(
                profile_model, variant, settings.input_shape, settings.profile_warmup_steps
            ),
        }
    return {"input_shape": settings.input_shape, "profiles": profiles}


def cardinality_variants(bf16: bool) -> list[Variant]:
    """The equal-complexity C series on the 50-layer template: the paper's 2D widths and the 3D
    widths that restore equal parameters (``resnext3d complexity``), channels-last, in float32
    and (where native) bf16-mixed."""
    pairs = [(row["cardinality"], row["width"]) for row in complexity_table(3)]
    pairs += [(row["cardinality"], row["equal_width"]) for row in complexity_table(3)]
    variants = []
    for bf16_ in (False, True) if bf16 else (False,):
        for cardinality, width in dict.fromkeys(pairs):
            name = f"resnext50_{cardinality}x{width}d"
            variants.append(
                replace(
                    OURS_CHANNELS_LAST,
                    key=f"{name}_cl{'_bf16' if bf16_ else ''}",
                    label=name,
                    bf16=bf16_,
                    cardinality=cardinality,
                    base_width=width,
                )
            )
    return variants


def benchmark_cardinality(settings: Settings) -> dict:
    """Train-step time of every network of the C series, all in one fresh process and timed
    round after round, a few steps of each network per round: on a shared machine a slow spell
    then falls on every network alike, and the ratios to the one-group network hold."""
    variants = cardinality_variants(device_runs_bf16_natively(bench_device()))
    progress(f"C series: {len(variants)} network settings, {settings.cardinality_rounds} rounds")
    measured = run_in_fresh_process(
        measure_series,
        variants,
        settings.input_shape,
        settings.cardinality_warmup_steps,
        settings.cardinality_rounds,
        settings.cardinality_steps_per_round,
    )
    share = measured["other_processes_cpu_share"]
    rows = [
        {
            **asdict(variant),
            **result,
            "train": summarize([result["train"]], settings.batch),
            "other_processes_cpu_share": share,
        }
        for variant, result in zip(variants, measured["results"], strict=True)
    ]
    return {"input_shape": settings.input_shape, "rows": compare_cardinality(rows)}


def measure_series(
    variants: Sequence[Variant],
    input_shape: Sequence[int],
    warmup_steps: int,
    rounds: int,
    steps_per_round: int,
) -> dict:
    """Train steps of every variant, interleaved. Variants that differ only in bf16 share one
    network (its weights drift a little apart from the float32 run's, which changes no
    timing), which halves the memory that every network's weights and AdamW state take."""
    device = bench_device()
    networks: dict[tuple[int | None, int | None], tuple[nn.Module, torch.Tensor]] = {}
    steps, results = [], []
    for variant in variants:
        shape_key = (variant.cardinality, variant.base_width)
        if shape_key not in networks:
            # bf16's preparation: its tiny-map guard changes nothing outside bf16 autocast.
            model, inputs, _ = prepare_model(replace(variant, bf16=True), input_shape, device)
            networks[shape_key] = model, inputs
        model, inputs = networks[shape_key]
        steps.append(train_step_of(model, inputs, autocast_forward(model, device, variant.bf16)))
        with torch.device("meta"):
            meta_model = build_model(variant)
            results.append(
                {
                    "macs": count_macs(meta_model, input_shape),
                    "parameters": count_parameters(meta_model),
                    "train": {"step_s": [], "warmup_s": [], "peak_memory_mib": None},
                }
            )
    for step, result in zip(steps, results, strict=True):
        result["train"]["warmup_s"] = [one_off_seconds(step) for _ in range(warmup_steps)]
    for _ in range(rounds):
        for step, result in zip(steps, results, strict=True):
            result["train"]["step_s"] += [one_off_seconds(step) for _ in range(steps_per_round)]
    return {"results": results}


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
