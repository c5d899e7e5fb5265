"""``resnext3d export``: a run's network, with its checkpoint's weights, as an ONNX model or a
``torch.export`` program that an engine runs without the network's Python code, and beside it
a JSON of what a prediction needs to know about the run."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from resnext3d.deploy.engines import EXPORT_DIR, MODEL_FILES, EngineError
from resnext3d.training import (
    CONFIG_FILE,
    CheckpointError,
    best_checkpoint,
    check_checkpoint_task,
    check_checkpoint_weights,
    read_checkpoint,
)
from resnext3d.training.checkpoints import LAST_CHECKPOINT

EXPORT_FORMATS = tuple(MODEL_FILES)
METADATA_SUFFIX = ".json"  # beside the model: model.onnx.json
# Windows per batch in the traced example: not 1, which torch.export would specialise on.
EXAMPLE_BATCH = 2
# The largest difference from PyTorch's logits that an export may show on a random input.
EXPORT_TOLERANCE = 1e-4
FIT_ARGUMENTS = ("ckpt_path", "weights_only")


def export_network(
    network: nn.Module, input_shape: tuple[int, ...], export_format: str, path: Path
) -> float:
    """Export `network` in eval mode for float32 inputs of `input_shape` (channels, *window)
    and any batch size, to `path`; returns the largest difference of the exported model's
    outputs from the network's on a random batch (checked against ``EXPORT_TOLERANCE``)."""
    network = network.eval()
    example = torch.randn(EXAMPLE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    # The sliding window's last batch holds fewer windows: the batch size stays free.
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        # The exporter's notes on torchvision's operators and on its own internals.
        warnings.simplefilter("ignore")
        expected = network(example).float().numpy()
        if export_format == "onnx":
            program = torch.onnx.export(
                network,
                (example,),
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=["image"],
                output_names=["logits"],
                verbose=False,
            )
            program.save(str(path))
            exported = _onnx_outputs(path, example.numpy())
        elif export_format == "torch-export":
            program = torch.export.export(network, (example,), dynamic_shapes=dynamic_shapes)
            torch.export.save(program, path)
            exported = torch.export.load(path).module()(example).numpy()
        else:
            raise ValueError(f"unknown export format {export_format!r}; one of {EXPORT_FORMATS}")
    difference = float(np.abs(exported - expected).max())
    if not difference <= EXPORT_TOLERANCE:
        raise EngineError(
            f"{path}: the exported model's logits differ from PyTorch's by up to {difference:.2g} "
            f"(more than {EXPORT_TOLERANCE:g}) on a random input"
        )
    return difference


@contextlib.contextmanager
def _quiet_exporter():
    """The ONNX exporter logs, as warnings, that torchvision's operators are not registered."""
    exporter = logging.getLogger("torch.onnx")
    level = exporter.level
    exporter.setLevel(logging.ERROR)
    try:
        yield
    finally:
        exporter.setLevel(level)


def _onnx_outputs(path: Path, windows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: windows})[0]


def run_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """The run's checkpoint that `checkpoint` names: "best" (as predict --run takes), "last",
    or a file."""
    if checkpoint == "best":
        return best_checkpoint(run_dir)
    if checkpoint == "last":
        return run_dir / LAST_CHECKPOINT
    return Path(checkpoint).resolve()


def export_run(
    run_dir: Path, export_format: str, out: Path | None = None, checkpoint: str = "best"
) -> Path:
    """Export the network of `run_dir` (built from its config.yaml, with the weights of its
    `checkpoint`) for the windows its predictions feed: the sliding window's for a segmenter,
    the data's ``roi_size`` for a classifier. Returns the model file (by default
    ``RUN_DIR/export/model.onnx`` or ``model.pt2``), beside which ``<file>.json`` says what
    prediction needs (window, spacing, regions, threshold, mirroring, post-processing)."""
    from resnext3d.cli import build_model_and_data

    run_dir = run_dir.resolve()
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    config = yaml.safe_load(config_file.read_text())
    checkpoint_file = run_checkpoint(run_dir, checkpoint)
    state = read_checkpoint(checkpoint_file)
    task = config["model"]["class_path"]
    check_checkpoint_task(checkpoint_file, state, task)
    # The run's config less the arguments of Trainer.fit that it records, which a parser
    # without subcommands does not take.
    settings = {key: value for key, value in config.items() if key not in FIT_ARGUMENTS}
    model, data = build_model_and_data(settings)
    check_checkpoint_weights(checkpoint_file, state, model)
    model.load_state_dict(state["state_dict"])
    window = tuple(getattr(model, "sliding_window_size", None) or data.roi_size)
    input_shape = (data.in_channels, *window)
    path = (out or run_dir / EXPORT_DIR / MODEL_FILES[export_format]).resolve()
    difference = export_network(model.network, input_shape, export_format, path)
    task_settings = config["model"]["init_args"]
    metadata = {
        "format": export_format,
        "run": str(run_dir),
        "checkpoint": str(checkpoint_file),
        "task": task,
        "input": {"channels": data.in_channels, "window": list(window), "batch": "any"},
        "modalities": _modalities(data.in_channels),
        "roi_size": list(data.roi_size),
        "spacing": list(getattr(data, "spacing", ()) or ()),
        "class_names": list(model.class_names),
        "inference": {
            name: task_settings.get(name)
            for name in (
                "threshold",
                "mirror_axes",
                "overlap",
                "sliding_window_batch_size",
                "postprocessing",
            )
            if name in task_settings
        },
        "max_abs_difference_from_pytorch": difference,
        "torch": torch.__version__,
    }
    metadata_file = path.with_name(path.name + METADATA_SUFFIX)
    metadata_file.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def _modalities(channels: int) -> list[str] | None:
    from resnext3d.data.layouts import MODALITIES

    return list(MODALITIES) if channels == len(MODALITIES) else None


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="resnext3d export",
        description="Export a run's network for CPU inference outside PyTorch's training code "
        "(predict --engine onnxruntime|openvino|torch-export).",
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    parser.add_argument(
        "--out", type=Path, help="the model file (default: RUN/export/model.onnx or model.pt2)"
    )
    parser.add_argument(
        "--checkpoint", default="best", help="best (default, as predict --run), last, or a file"
    )
    args = parser.parse_args(argv)
    if args.format == "torch-export" and args.out and args.out.suffix != ".pt2":
        # torch.export.load reads a program from a file of that name only.
        parser.error(f"--out {args.out}: a torch.export program is a .pt2 file")
    try:
        path = export_run(args.run, args.format, args.out, args.checkpoint)
    except CheckpointError as error:
        print(f"resnext3d export: error: {error}", file=sys.stderr)
        return 1
    print(f"{path}\n{path.with_name(path.name + METADATA_SUFFIX)}")
    return 0
