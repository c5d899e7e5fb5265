"""Engines that run an exported network in place of PyTorch's: each is an ``nn.Module`` that
takes a batch of windows as a tensor and returns the logits as one, so the task's sliding window,
mirroring, post-processing and writer run around it unchanged."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from resnext3d.training.checkpoints import CheckpointError

# Engine: the export format it reads, the package it needs.
ENGINES = {
    "torch": (None, "torch"),  # the run's checkpoint in PyTorch, as without --engine
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "openvino"),
    "torch-export": ("torch-export", "torch"),
}
EXPORT_DIR = "export"  # in the run directory
MODEL_FILES = {"onnx": "model.onnx", "torch-export": "model.pt2"}


class EngineError(CheckpointError):
    """An exported model that cannot run for this run; the message names the file and why."""


@dataclass(frozen=True)
class EngineRequest:
    """``predict --engine NAME [--exported FILE]`` (validate and test too): the engine and the
    exported model's file."""

    engine: str
    exported: Path | None = None

    @property
    def replaces_network(self) -> bool:
        return self.engine != "torch"

    def lightning_arguments(self, args: list[str], ensemble: list[Path]) -> list[str]:
        """The predict command line for the engine: without the checkpoint, whose weights the
        exported model holds, and in float32, which it computes in (unless asked otherwise)."""
        if not self.replaces_network:
            return args
        if ensemble:
            raise EngineError(f"--engine {self.engine} runs one exported network, not an ensemble")
        arguments = []
        skip = False
        for arg in args:
            if skip or arg.startswith("--ckpt_path="):
                skip = False
                continue
            skip = arg == "--ckpt_path"
            if not skip:
                arguments.append(arg)
        if not any(arg.startswith("--trainer.precision") for arg in arguments):
            arguments += ["--trainer.precision", "32-true"]
        return arguments

    def model_file(self, run_dir: Path | None, task: str) -> Path:
        """The exported model: `exported`, else the run's ``export/model.<format>``; checked to
        be a model of `task` (the task's class path) where its metadata says."""
        export_format = ENGINES[self.engine][0]
        if self.exported is not None:
            path = self.exported
        elif run_dir is not None:
            path = run_dir / EXPORT_DIR / MODEL_FILES[export_format]
        else:
            raise EngineError(
                f"--engine {self.engine} with --config: give the exported model (--exported FILE)"
            )
        if not path.is_file():
            raise EngineError(
                f"{path}: no such exported model; write it with `resnext3d export --run RUN_DIR "
                f"--format {export_format}`, or give another with --exported FILE"
            )
        metadata = path.with_name(path.name + ".json")
        exported_task = json.loads(metadata.read_text()).get("task") if metadata.is_file() else None
        if exported_task not in (None, task):
            raise EngineError(
                f"{path}: exported from a {exported_task.rsplit('.', 1)[-1]} (its {metadata.name}),"
                f" but this run is a {task.rsplit('.', 1)[-1]}"
            )
        return path


def take_engine_options(args: list[str]) -> tuple[EngineRequest | None, list[str]]:
    """``--engine NAME`` and ``--exported FILE`` taken out of a validate, test or predict command
    line (they are no Lightning options); None where no engine is asked for."""
    values: dict[str, str] = {}
    rest = []
    arguments = iter(args)
    for arg in arguments:
        option, equals, value = arg.partition("=")
        if option not in ("--engine", "--exported"):
            rest.append(arg)
            continue
        value = value if equals else next(arguments, None)
        if value is None or value.startswith("--"):
            raise EngineError(f"{option} needs a value")
        values[option] = value
    if not values:
        return None, args
    if args[0] == "fit":
        raise EngineError("--engine and --exported are for validate, test and predict, not fit")
    engine = values.get("--engine", "onnxruntime")
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    exported = Path(values["--exported"]).resolve() if "--exported" in values else None
    return EngineRequest(engine, exported), rest


class EngineNetwork(nn.Module):
    """A network run by an engine: float32 windows (B, C, *window) in, logits out, on the
    input's device. Its subclasses load the model, then check that its input (channels and
    window, any batch size) is the run's.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def check_input(self, channels: int, window: tuple[int, ...]) -> None:
        """Raise an EngineError unless the model takes `channels` x `window` windows: the run's
        data's channels and its sliding window's (or classifier's) window."""
        expected = (channels, *window)
        if self.input_shape != expected:
            given = "x".join(map(str, self.input_shape))
            raise EngineError(
                f"{self.path}: the exported model takes windows of {given} (channels x window), "
                f"this run feeds {'x'.join(map(str, expected))}: export the run again, or "
                "predict with the roi_size and sliding_window_size it was exported with"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model's input shape without its batch dimension."""
        raise NotImplementedError

    def run(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # C-contiguous float32: the task hands channels-last windows, the engines take NCDHW.
        windows = image.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run(windows)).to(image.device)


class OnnxRuntimeNetwork(EngineNetwork):
    """An ONNX model on onnxruntime's CPU provider, with as many threads as torch uses."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        ort = _engine_package("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own, unexported exception types
            raise EngineError(f"{path}: onnxruntime cannot load it ({error})") from error
        (self.input,) = self.session.get_inputs()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.input.shape[1:])

    def run(self, windows: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: windows})[0]


class OpenVinoNetwork(EngineNetwork):
    """An ONNX model compiled by OpenVINO for the CPU, in float32 by default: on CPUs with bf16
    OpenVINO otherwise computes in bf16 (its logits 0.09 from float32's on the phantom's
    network), which `precision="bf16"` chooses."""

    def __init__(self, path: Path, precision: str = "f32") -> None:
        super().__init__(path)
        ov = _engine_package("openvino")
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as error:  # OpenVINO raises RuntimeError for an unreadable model
            raise EngineError(f"{path}: OpenVINO cannot load it ({error})") from error
        self.request = self.compiled.create_infer_request()

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = self.compiled.input(0).get_partial_shape()
        return tuple(dimension.get_length() for dimension in list(shape)[1:])

    def run(self, windows: np.ndarray) -> np.ndarray:
        self.request.infer({0: windows})
        # A copy: the request reuses its output buffer for the next batch.
        return self.request.get_output_tensor(0).data.copy()


class TorchExportNetwork(EngineNetwork):
    """A ``torch.export`` program (``.pt2``), run by PyTorch without the network's Python code."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            program = torch.export.load(path)
        except Exception as error:  # torch raises several types for a file that is no program
            raise EngineError(f"{path}: not a torch.export program ({error})") from error
        (name,) = program.graph_signature.user_inputs
        (node,) = [node for node in program.graph.nodes if node.name == name]
        self.example_shape = tuple(int(size) for size in node.meta["val"].shape[1:])
        self.program = program.module()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.example_shape

    def train(self, mode: bool = True) -> TorchExportNetwork:
        # The program was exported in eval mode and refuses train(), even train(False), which
        # Lightning calls before predicting.
        self.training = mode
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.program(image.float().contiguous())


ENGINE_NETWORKS = {
    "onnxruntime": OnnxRuntimeNetwork,
    "openvino": OpenVinoNetwork,
    "torch-export": TorchExportNetwork,
}


def engine_network(
    request: EngineRequest,
    run_dir: Path | None,
    task: str,
    channels: int,
    window: tuple[int, ...],
) -> EngineNetwork:
    """The network of `request`'s engine for a run of `task` (its class path) whose data has
    `channels` and whose windows are `window`."""
    network = ENGINE_NETWORKS[request.engine](request.model_file(run_dir, task))
    network.check_input(channels, tuple(window))
    return network


def _engine_package(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise EngineError(
            f"the {name} engine needs the {name} package: pip install 'resnext3d[deploy]'"
        ) from error
