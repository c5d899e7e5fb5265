"""`resnext3d export` and `predict --engine`: the exported network computes PyTorch's logits on
every engine, a model that does not fit the run or is missing is one line, and a run predicted on
an engine writes PyTorch's masks."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from test_ensemble import SEGMENTATION, fit_runs
from test_experiments import small_data
from test_failures import run_expecting_exit_1

from benchmarks import bench_inference
from resnext3d.cli import main
from resnext3d.data import generate_phantom
from resnext3d.data.transforms import segmentation_transforms, to_file_grid
from resnext3d.deploy import EngineError, EngineRequest, take_engine_options
from resnext3d.deploy.engines import (
    OnnxRuntimeNetwork,
    OpenVinoNetwork,
    TorchExportNetwork,
)
from resnext3d.deploy.export import export_main, export_network
from resnext3d.models import build_network, plan_unet
from resnext3d.tasks.segmentation import thresholded_on_file_grid

WINDOW = (32, 32, 32)
# What an engine may differ from PyTorch by: float32 logits, and masks of the same voxels but
# for the rare voxel whose probability lies within rounding of the threshold.
LOGITS_TOLERANCE = 1e-4
MASKS_EQUAL = 0.999
SEGMENTER = "resnext3d.tasks.VolumeSegmenter"


def tiny_unet(norm: str) -> torch.nn.Module:
    """A planned UNet, seeded and freshly initialised, small but with what the exporters must
    handle: grouped 3D convolutions, a norm, transposed convolutions."""
    torch.manual_seed(0)
    plan = plan_unet("resnext_unet_s", WINDOW, (3.0, 3.0, 3.0), layers=[1, 1, 1, 1],
                     cardinality=4, group_width=2, first_width=8, norm=norm)  # fmt: skip
    return build_network(plan).eval()


def engine_model(engine: str, path: Path) -> torch.nn.Module:
    networks = {"onnxruntime": OnnxRuntimeNetwork, "openvino": OpenVinoNetwork}
    return networks.get(engine, TorchExportNetwork)(path)


def assert_computes_the_logits_of(network: torch.nn.Module, model: torch.nn.Module) -> None:
    """`model` returns `network`'s float32 logits for any number of windows (the example
    had 2; a sliding window's last batch has fewer), from channels-last windows as the task
    hands them."""
    model.check_input(4, WINDOW)
    for windows in (1, 3):
        image = torch.randn(windows, 4, *WINDOW).contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            expected = network(image)
            logits = model(image)
        assert logits.shape == expected.shape and logits.dtype == torch.float32
        assert (logits - expected).abs().max() <= LOGITS_TOLERANCE


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The tiny UNet in batch norm, exported to ONNX (one export: seconds of the exporter's)."""
    network = tiny_unet("batch")
    onnx = tmp_path_factory.mktemp("export") / "model.onnx"
    assert export_network(network, (4, *WINDOW), "onnx", onnx) <= LOGITS_TOLERANCE
    return network, onnx


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_the_onnx_engines_compute_pytorchs_logits(exported, engine):
    network, onnx = exported
    assert_computes_the_logits_of(network, engine_model(engine, onnx))


@pytest.mark.slow  # two exports per norm
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_every_engine_computes_pytorchs_logits_in_either_norm(norm, tmp_path):
    network = tiny_unet(norm)
    for export_format, engines in (("onnx", ["onnxruntime", "openvino"]),
                                   ("torch-export", ["torch-export"])):  # fmt: skip
        path = tmp_path / f"model.{'pt2' if export_format == 'torch-export' else 'onnx'}"
        assert export_network(network, (4, *WINDOW), export_format, path) <= LOGITS_TOLERANCE
        for engine in engines:
            assert_computes_the_logits_of(network, engine_model(engine, path))


def test_a_model_exported_for_another_window_or_channels_is_named(exported):
    model = OnnxRuntimeNetwork(exported[1])
    with pytest.raises(
        EngineError, match=r"model.onnx: .* windows of 4x32x32x32 .* feeds 4x48x48x48"
    ):
        model.check_input(4, (48, 48, 48))
    with pytest.raises(EngineError, match=r"feeds 2x32x32x32"):
        model.check_input(2, WINDOW)


def test_a_missing_or_foreign_model_is_named(tmp_path):
    with pytest.raises(EngineError, match=r"export/model.onnx: no such exported model; .* "
                       r"`resnext3d export --run RUN_DIR --format onnx`"):  # fmt: skip
        EngineRequest("openvino").model_file(tmp_path, SEGMENTER)
    model = tmp_path / "classifier.onnx"
    model.write_bytes(b"")
    model.with_name("classifier.onnx.json").write_text(
        json.dumps({"task": "resnext3d.tasks.VolumeClassifier"})
    )
    with pytest.raises(
        EngineError, match="from a VolumeClassifier .* this run is a VolumeSegmenter"
    ):
        EngineRequest("onnxruntime", model).model_file(tmp_path, SEGMENTER)
    with pytest.raises(EngineError, match="classifier.onnx: onnxruntime cannot load it"):
        OnnxRuntimeNetwork(model)


def test_a_missing_engine_package_names_the_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(EngineError, match=r"needs the openvino package: pip install "
                       r"'resnext3d\[deploy\]'"):  # fmt: skip
        OpenVinoNetwork(exported[1])


def test_the_engine_options_are_taken_from_the_command_line():
    args = ["predict", "--config", "c.yaml", "--ckpt_path", "best.ckpt", "--engine", "openvino"]
    request, rest = take_engine_options([*args, "--exported=m.onnx"])
    assert request == EngineRequest("openvino", Path("m.onnx").resolve())
    assert request.lightning_arguments(rest, []) == [
        "predict", "--config", "c.yaml", "--trainer.precision", "32-true"]  # fmt: skip
    assert take_engine_options(args[:5]) == (None, args[:5])
    assert take_engine_options(["predict", "--engine", "torch"])[0].replaces_network is False
    with pytest.raises(EngineError, match="unknown engine 'tensorrt'; choose one of torch,"):
        take_engine_options(["predict", "--engine", "tensorrt"])
    with pytest.raises(EngineError, match="not fit"):
        take_engine_options(["fit", "--engine", "onnxruntime"])
    with pytest.raises(EngineError, match="not an ensemble"):
        request.lightning_arguments(rest, [Path("a.ckpt"), Path("b.ckpt")])


def test_masks_on_the_files_grid_are_those_of_resampling_the_whole_grid(tmp_path):
    """Resampling only around the voxels above the threshold gives the masks of resampling
    every voxel, on flipped, anisotropic voxels unlike the network's."""
    data = generate_phantom(tmp_path, cases=1, shape=(40, 36, 24), spacing=(1.2, 1.0, 1.5))
    case = next(data.glob("BraTS*"))
    files = [str(path) for path in sorted(case.glob("*.nii.gz")) if "_seg" not in path.name]
    image = segmentation_transforms("predict", "brats2021", WINDOW, (3.0, 2.0, 2.5))(
        {"image": files}
    )["image"]
    # Smooth blobs, one per region, that reach the volume's edge in one of them.
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in image.shape[1:]), indexing="ij"))
    centres = [(4.0, 6.0, 3.0), (0.0, 9.0, 5.0), (6.0, 5.0, 4.0)]
    probabilities = torch.stack(
        [
            torch.exp(-((grid - torch.tensor(c)[:, None, None, None]) ** 2).sum(0) / 12)
            for c in centres
        ]
    )
    for threshold in (0.3, 0.5, 0.9, 1.5):  # 1.5: nothing above it
        expected = to_file_grid(MetaTensor(probabilities, meta=image.meta)).as_tensor() > threshold
        masks = thresholded_on_file_grid(probabilities, image, threshold)
        assert masks.shape == expected.shape and masks.dtype == torch.bool
        assert torch.equal(masks, expected), threshold
        assert masks.any() == (threshold < 1)


@pytest.mark.slow  # a fit, two exports and four predictions of their own
def test_a_run_predicted_on_every_engine_writes_pytorchs_masks(tiny_phantom, tmp_path, capsys):
    window = ["--model.init_args.sliding_window_size", "[32, 32, 32]"]
    (run,) = fit_runs(tiny_phantom, tmp_path, SEGMENTATION, [window])
    for export_format in ("onnx", "torch-export"):
        assert export_main(["--run", str(run), "--format", export_format]) == 0
    metadata = json.loads((run / "export" / "model.onnx.json").read_text())
    assert metadata["input"] == {"channels": 4, "window": [32, 32, 32], "batch": "any"}
    assert metadata["class_names"] == ["TC", "WT", "ET"] and metadata["task"] == SEGMENTER
    data = [*small_data(tiny_phantom), "--data.init_args.predict_split", "val"]
    predictions = {}
    for engine in ("torch", "onnxruntime", "openvino", "torch-export"):
        before = set(run.parent.iterdir())
        main(["predict", "--run", str(run), "--engine", engine, "--trainer.precision", "32-true",
              *data])  # fmt: skip
        (new,) = set(run.parent.iterdir()) - before
        predictions[engine] = new / "predictions"
    names = sorted(path.name for path in predictions["torch"].iterdir())
    assert names and all(name.endswith("_seg.nii.gz") for name in names)
    for engine, folder in predictions.items():
        assert sorted(path.name for path in folder.iterdir()) == names
        equal = total = 0
        for name in names:
            expected = np.asarray(nib.load(predictions["torch"] / name).dataobj)
            labels = np.asarray(nib.load(folder / name).dataobj)
            equal, total = equal + (labels == expected).sum(), total + expected.size
        assert equal / total >= MASKS_EQUAL, engine
    # A window other than the exported one is refused before anything runs.
    error = run_expecting_exit_1(
        ["predict", "--run", str(run), "--engine", "onnxruntime", *data,
         "--model.init_args.sliding_window_size", "[48, 48, 48]"], capsys)  # fmt: skip
    assert "windows of 4x32x32x32" in error and "feeds 4x48x48x48" in error


@pytest.mark.slow  # a fit, two exports and one prediction per engine, each its own process
def test_the_inference_benchmark_times_every_engine(tmp_path):
    bench_inference.main(["--quick", "--out", str(tmp_path)])
    table = (tmp_path / "results.md").read_text()
    for engine in ("torch fp32", "torch.export", "onnxruntime", "openvino"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {engine} | no |"))
        assert " differ) | " in row  # the agreement with torch fp32, then the load
    assert "| torch fp32 | no |" in table and "100.0000% (0 differ)" in table
    assert "Stages of a torch fp32 case without mirroring: load and resample" in table
