"""A study config: the base experiment, the variants to compare, the replicates.

Parsed by jsonargparse from YAML (``experiments/studies/*.yaml``) and the command line, as
``resnext3d fit`` parses its own; unknown or missing keys are errors that name the file and key.
The variants' networks are built by the CLI from the same configs their runs train with, and
counted there: a study cannot count another network than the one it trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnext3d.cli import build_model_and_data
from resnext3d.data.errors import DataError
from resnext3d.models import count_macs, count_parameters
from resnext3d.models.complexity import (
    BLOCK_CHANNELS,
    bottleneck_parameters,
    equal_complexity_width,
)
from resnext3d.models.resnext import BasicBlock, Bottleneck

EXPERIMENTS = Path("experiments")
NETWORK = "model.init_args.network.init_args"


class StudyError(Exception):
    """A study config or run directory that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Block:
    """A bottleneck: C groups of width d, with `channels` in and out (ResNeXt's conv2 stage:
    256; a planned UNet's first stage: its first width, 32)."""

    cardinality: int
    width: int
    channels: int = BLOCK_CHANNELS

    @property
    def parameters(self) -> int:
        return bottleneck_parameters(self.cardinality, self.width, 3, self.channels)


@dataclass(frozen=True)
class DoubleComplexity:
    """A variant at about twice the reference's complexity: more layers of the reference's block
    (`layers`), or a block `block_complexity` times the reference's (2 without `layers`)."""

    cardinality: int
    layers: list[int] | None = None
    block_complexity: float | None = None


@dataclass(frozen=True)
class NetworkArguments:
    """The names the network gives C, d and the blocks per stage (ResNeXt's; a
    PlannedResNeXtUNet's are cardinality, group_width and layers)."""

    cardinality: str = "cardinality"
    width: str = "base_width"
    layers: str = "layers"


@dataclass
class StudyConfig:
    """Cardinality at equal complexity (the ResNeXt paper's Tables 3 and 4) over one experiment.

    Args:
        base: experiment configs, by path or name in experiments/ (``brats_cls``).
        reference: the block every equal-complexity variant matches in parameters.
        layers: blocks per stage of every equal-complexity variant.
        equal_complexity: the cardinalities C; each d is derived for 3×3×3 kernels.
        double_complexity: variants at about twice the complexity, by label (deeper, wider).
        seeds: every variant's seeds.
        folds: folds of the data's k-fold split, each a replicate; None: its hold-out split.
        overrides: a config merged over the base experiments for every run.
        network_arguments: the network's names for C, d and the blocks per stage.
        name: the study's name (default: the config file's).
        out_dir: the study's directory (default: runs/studies/<name>).
    """

    base: str | list[str]
    reference: Block
    layers: list[int]
    equal_complexity: list[int]
    double_complexity: dict[str, DoubleComplexity] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: list[int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    network_arguments: NetworkArguments = field(default_factory=NetworkArguments)
    name: str | None = None
    out_dir: str | None = None


@dataclass(frozen=True)
class Variant:
    """One architecture of the study: `group` is "equal" (the equal-complexity series) or the
    2×-complexity variant's label (e.g. "deeper"). `depth`, `parameters` and `gmacs` are counted
    on the network its runs build, at the data's crop size `crop`."""

    group: str
    cardinality: int
    width: int
    layers: tuple[int, ...]
    depth: int
    parameters: int
    gmacs: float
    crop: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"resnext{self.depth}_{self.cardinality}x{self.width}d"


@dataclass(frozen=True)
class Run:
    variant: Variant
    seed: int
    fold: int | None

    @property
    def name(self) -> str:
        fold = "" if self.fold is None else f"-fold{self.fold}"
        return f"{self.variant.name}-seed{self.seed}{fold}"

    @property
    def replicate(self) -> str:
        """The run's seed (and fold): its column in the results, e.g. "seed0"."""
        return self.name.removeprefix(self.variant.name + "-")

    @property
    def tags(self) -> dict[str, Any]:
        tags = {
            "variant": self.variant.name,
            "group": self.variant.group,
            "C": self.variant.cardinality,
            "d": self.variant.width,
            "depth": self.variant.depth,
            "seed": self.seed,
        }
        if self.fold is not None:
            tags["fold"] = self.fold
        return tags


@dataclass
class Study:
    """A study config with its variants resolved and counted."""

    path: Path
    name: str
    base: list[Path]
    out_dir: Path
    config: StudyConfig
    variants: list[Variant]

    @property
    def seeds(self) -> list[int]:
        return self.config.seeds

    @property
    def folds(self) -> list[int | None]:
        return [None] if self.config.folds is None else self.config.folds

    @property
    def reference_cardinality(self) -> int:
        return self.config.reference.cardinality

    @property
    def runs(self) -> list[Run]:
        """Seed by seed, so that a study stopped early has whole series at its first seeds."""
        return [
            Run(variant, seed, fold)
            for seed in self.seeds
            for fold in self.folds
            for variant in self.variants
        ]

    def run_dir(self, run: Run) -> Path:
        return self.out_dir / "runs" / run.name

    def config_arguments(self) -> list[str]:
        """The base experiments and the study's overrides, as ``resnext3d fit`` takes them."""
        arguments = []
        for base in self.base:
            arguments += ["--config", str(base)]
        if self.config.overrides:
            arguments += ["--config", json.dumps(self.config.overrides)]
        return arguments

    def variant_arguments(self, variant: Variant | tuple[int, int, tuple[int, ...]]) -> list[str]:
        """The network arguments that make `variant` (or a (C, d, layers) triple) of the base."""
        if isinstance(variant, Variant):
            variant = (variant.cardinality, variant.width, variant.layers)
        cardinality, width, layers = variant
        names = self.config.network_arguments
        return [
            f"--{NETWORK}.{names.cardinality}={cardinality}",
            f"--{NETWORK}.{names.width}={width}",
            f"--{NETWORK}.{names.layers}={json.dumps(list(layers))}",
        ]


def parse_study(config: StudyConfig, path: Path, out_dir: str | Path | None = None) -> Study:
    """Resolve the variants of a parsed config; counting builds each network as its runs will."""
    name = config.name or path.stem
    bases = [config.base] if isinstance(config.base, str) else config.base
    base = [_experiment_file(path, item) for item in bases]
    reference = config.reference
    layers = tuple(config.layers)
    specs = [("equal", c, reference.parameters, layers) for c in config.equal_complexity]
    for label, spec in config.double_complexity.items():
        factor = spec.block_complexity or (1 if spec.layers else 2)
        specs.append(
            (label, spec.cardinality, round(factor * reference.parameters),
             tuple(spec.layers or layers))
        )  # fmt: skip
    study = Study(path, name, base, Path(out_dir or config.out_dir or Path("runs/studies") / name),
                  config, [])  # fmt: skip
    for group, cardinality, budget, variant_layers in specs:
        width = equal_complexity_width(cardinality, budget, 3, reference.channels)
        study.variants.append(_counted_variant(study, group, cardinality, width, variant_layers))
    names = [variant.name for variant in study.variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudyError(f"{path}: variants {repeated} appear twice; every variant must differ")
    return study


def _counted_variant(
    study: Study, group: str, cardinality: int, width: int, layers: tuple[int, ...]
) -> Variant:
    """The variant with its depth, parameters and GMACs at the data's crop, from the network
    ``resnext3d fit`` builds with the study's configs (on the meta device: nothing allocated)."""
    arguments = [*study.config_arguments(), *study.variant_arguments((cardinality, width, layers))]
    try:
        with torch.device("meta"):
            try:
                model, data = build_model_and_data(arguments)
            except DataError:
                # A data folder not (yet) on this machine, e.g. where a SLURM array is written:
                # the phantom has BraTS's modalities and the task's classes, so the same network.
                model, data = build_model_and_data([*arguments, "--data.init_args.data_dir=null"])
            network = model.network
            macs = count_macs(network, (1, data.in_channels, *data.roi_size))
    except (SystemExit, ValueError, TypeError) as error:
        raise StudyError(
            f"{study.path}: the network of C={cardinality}, d={width}, layers {list(layers)} "
            f"cannot be built from {[str(b) for b in study.base]} and the overrides: {error}"
        ) from error
    return Variant(
        group, cardinality, width, layers, _depth(network), count_parameters(network), macs / 1e9,
        tuple(data.roi_size),
    )  # fmt: skip


def _depth(network: nn.Module) -> int:
    """Weighted layers of the encoder as the ResNeXt paper counts them: the stem, those of each
    block (three in a bottleneck, two in a basic block) and the classifier (counted for an
    encoder without one too, so that a UNet's encoder reads as the classifier it would be)."""
    encoder = getattr(network, "encoder", network)
    weighted = [
        3 if isinstance(module, Bottleneck) else 2
        for module in encoder.modules()
        if isinstance(module, Bottleneck | BasicBlock)
    ]
    return 2 + sum(weighted)


def _experiment_file(study_path: Path, base: str) -> Path:
    """`base` as a path, or the name of a file in experiments/ (``brats_cls``)."""
    for candidate in (Path(base), EXPERIMENTS / f"{base}.yaml"):
        if candidate.is_file():
            return candidate
    raise StudyError(
        f"{study_path}: base experiment {base!r} is neither a file nor experiments/{base}.yaml "
        f"(run the study from the repository root)"
    )
