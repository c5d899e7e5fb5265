"""The ``resnext3d`` command: Lightning's ``fit|validate|test|predict`` plus a few tools."""

from __future__ import annotations

import argparse
import sys

import torch

from resnext3d.models import count_macs, count_parameters, create_model, list_models
from resnext3d.models.complexity import complexity_table
from resnext3d.models.registry import PRESETS


def models_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="resnext3d models", description="Every preset with its parameters and GMACs."
    )
    parser.add_argument("--spatial-dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--in-channels", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument(
        "--input-size", type=int, nargs="+", default=[128], help="one size or one per axis"
    )
    args = parser.parse_args(argv)
    size = args.input_size * args.spatial_dims if len(args.input_size) == 1 else args.input_size
    if len(size) != args.spatial_dims:
        parser.error(f"--input-size needs 1 or {args.spatial_dims} values, got {len(size)}")
    shape = (1, args.in_channels, *size)
    print(f"{args.spatial_dims}D, input {'x'.join(map(str, shape))}, {args.num_classes} classes")
    print(f"{'model':<20} {'layers':<14} {'C':>3} {'d':>3} {'params (M)':>11} {'GMACs':>9}")
    for name in list_models():
        # On the meta device a 150-layer 3D network is built and run without memory or time.
        with torch.device("meta"):
            model = create_model(
                name,
                spatial_dims=args.spatial_dims,
                in_channels=args.in_channels,
                num_classes=args.num_classes,
            )
            macs = count_macs(model, shape)
        preset = {"cardinality": 1, "base_width": 64, **PRESETS[name]}
        layers = "-".join(map(str, preset["layers"]))
        print(
            f"{name:<20} {layers:<14} {preset['cardinality']:>3} {preset['base_width']:>3} "
            f"{count_parameters(model) / 1e6:>11.2f} {macs / 1e9:>9.2f}"
        )


def complexity_command(argv: list[str]) -> None:
    argparse.ArgumentParser(
        prog="resnext3d complexity",
        description="The paper's Table 2 (conv2 block, 256-d in and out) in 2D and 3D.",
    ).parse_args(argv)
    for spatial_dims in (2, 3):
        rows = complexity_table(spatial_dims)
        kernel = "×".join(["3"] * spatial_dims)
        print(
            f"\n{spatial_dims}D, {kernel} kernels: ResNet block (C=1, d=64) "
            f"= {rows[0]['reference']:,} parameters"
        )
        print(
            f"{'C':>3} {'d':>4} {'parameters':>11}   {'equal-complexity d':>18} {'parameters':>11}"
        )
        for row in rows:
            print(
                f"{row['cardinality']:>3} {row['width']:>4} {row['parameters']:>11,}   "
                f"{row['equal_width']:>18} {row['equal_parameters']:>11,}"
            )


TOOLS = {"models": models_command, "complexity": complexity_command}
USAGE = """usage: resnext3d COMMAND [options]

training (Lightning CLI; `resnext3d fit --help` for every option):
  fit, validate, test, predict   e.g. resnext3d fit --config experiments/brats_cls.yaml
tools:
  models       every preset with parameters and GMACs at an input size
  complexity   the paper's Table 2 for a conv2 block, in 2D and 3D
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in TOOLS:
        TOOLS[argv[0]](argv[1:])
        return
    print(f"resnext3d: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)
