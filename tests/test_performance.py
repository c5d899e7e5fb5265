"""Device-dependent defaults: precision, memory format, compilation."""

import warnings

import lightning as L
import pytest
import torch
from toy_data import ToyVolumes

from resnext3d import create_model, performance
from resnext3d.performance import (
    accelerator_device_type,
    cpu_has_native_bf16,
    default_precision,
    uses_channels_last,
    warn_if_slow_precision,
)
from resnext3d.tasks import VolumeClassifier

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["bf16_cpu", "no_bf16_cpu"])
def native_bf16(request, monkeypatch):
    capabilities = {"architecture": "x86_64", "avx2": True, "avx512_bf16": request.param}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    return request.param


def test_cpu_bf16_is_native_only_with_its_instructions(native_bf16):
    assert cpu_has_native_bf16() is native_bf16


def test_cpu_precision_is_float32_even_with_native_bf16(native_bf16):
    assert default_precision("cpu") == "32-true"


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_precision_is_mixed_in_the_fastest_half_type(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert default_precision("cuda") == ("bf16-mixed" if bf16 else "16-mixed")


def bf16_warnings(precision: str = "bf16-mixed") -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_slow_precision(precision, CPU)
    return [str(warning.message) for warning in caught]


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_slow(monkeypatch):
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: False)
    (message,) = bf16_warnings()
    assert "slower" in message and "--trainer.precision 32-true" in message
    assert bf16_warnings("32-true") == []


@pytest.mark.parametrize("correct", [True, False])
def test_bf16_on_a_cpu_with_native_bf16_warns_only_of_wrong_gradients(monkeypatch, correct):
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(performance, "cpu_bf16_conv_gradients_are_correct", lambda: correct)
    messages = bf16_warnings()
    assert len(messages) == (0 if correct else 1)
    assert all("wrong weight gradients" in message for message in messages)


def patch_conv3d_under_autocast(monkeypatch, scale: float) -> None:
    """Make bf16 autocast convolutions compute in float32, scaled: exact at scale 1."""
    convolution = torch.nn.functional.conv3d

    def patched(inputs, weight, *args, **kwargs):
        if not torch.is_autocast_enabled("cpu"):
            return convolution(inputs, weight, *args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return scale * convolution(inputs.float(), weight.float(), *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv3d", patched)


@pytest.mark.parametrize(("scale", "correct"), [(1.0, True), (1.5, False)])
def test_the_bf16_gradient_probe_tells_right_gradients_from_wrong(monkeypatch, scale, correct):
    patch_conv3d_under_autocast(monkeypatch, scale)
    assert performance.cpu_bf16_conv_gradients_are_correct() is correct


@pytest.mark.parametrize(
    ("accelerator", "cuda_available", "expected"),
    [
        ("auto", False, "cpu"),
        ("auto", True, "cuda"),
        ("gpu", True, "cuda"),
        ("CPU", True, "cpu"),
        ("mps", False, None),
        (object(), False, None),
    ],
)
def test_accelerator_names_resolve_to_device_types(
    monkeypatch, accelerator, cuda_available, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert accelerator_device_type(accelerator) == expected


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", True), ("auto", "cuda", False), (True, "cuda", True), (False, "cpu", False)],
)
def test_auto_channels_last_is_for_cpu(setting, device, expected):
    assert uses_channels_last(setting, torch.device(device)) is expected


def fit_one_step(task: L.LightningModule, data: L.LightningDataModule, tmp_path) -> None:
    trainer = L.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data)


@pytest.mark.parametrize(
    ("channels_last", "memory_format"),
    [("auto", torch.channels_last_3d), (False, torch.contiguous_format)],
)
def test_fit_trains_in_the_memory_format_chosen_for_its_device(
    tmp_path, channels_last, memory_format
):
    encoder = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    task = VolumeClassifier(encoder, channels_last=channels_last)
    task.to(memory_format=torch.contiguous_format)  # as if built for another device
    fit_one_step(task, ToyVolumes(cases=4), tmp_path)
    assert task.encoder.conv1.weight.is_contiguous(memory_format=memory_format)
    assert task.memory_format == memory_format


def test_compile_compiles_the_network_in_place_and_keeps_checkpoint_keys(tmp_path):
    encoder = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    task = VolumeClassifier(encoder, compile=True)
    keys = set(task.state_dict())
    fit_one_step(task, ToyVolumes(cases=4), tmp_path)
    assert task.encoder._compiled_call_impl is not None
    assert set(task.state_dict()) == keys  # no "_orig_mod." prefix: plain checkpoints load
