"""Device-dependent defaults: precision, memory format, compilation."""

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import Precision
from toy_data import ToyVolumes

from resnext3d import create_model
from resnext3d.cli import RUN_VERSION_VARIABLE, ResNeXtCLI
from resnext3d.tasks import VolumeClassifier
from resnext3d.training import performance
from resnext3d.training.performance import (
    CpuBf16MixedPrecision,
    TinyMapSafeConv3d,
    accelerator_device_type,
    cpu_has_native_bf16,
    default_precision,
    guard_tiny_convolutions,
    precision_plugin,
    uses_channels_last,
    warn_if_slow_precision,
)

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["bf16_cpu", "no_bf16_cpu"])
def native_bf16(request, monkeypatch):
    capabilities = {"architecture": "x86_64", "avx2": True, "avx512_bf16": request.param}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    return request.param


def test_cpu_bf16_is_native_only_with_its_instructions(native_bf16):
    assert cpu_has_native_bf16() is native_bf16


def test_cpu_precision_is_bf16_mixed_only_where_bf16_is_native(native_bf16):
    assert default_precision("cpu") == ("bf16-mixed" if native_bf16 else "32-true")


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_precision_is_mixed_in_the_fastest_half_type(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert default_precision("cuda") == ("bf16-mixed" if bf16 else "16-mixed")


def bf16_warnings(precision: str = "bf16-mixed") -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_slow_precision(precision, CPU)
    return [str(warning.message) for warning in caught]


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_slow(native_bf16):
    messages = bf16_warnings()
    assert len(messages) == (0 if native_bf16 else 1)
    assert all("slower" in m and "--trainer.precision 32-true" in m for m in messages)
    assert bf16_warnings("32-true") == []


def patch_conv3d_under_autocast(monkeypatch, scale: float) -> None:
    """Make bf16 autocast convolutions compute in float32, scaled: exact at scale 1."""
    convolution = torch.nn.functional.conv3d

    def patched(inputs, weight, *args, **kwargs):
        if not torch.is_autocast_enabled("cpu"):
            return convolution(inputs, weight, *args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return scale * convolution(inputs.float(), weight.float(), *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv3d", patched)


@pytest.fixture
def uncached_probe():
    """The probe answers once per process; these tests ask it under patched convolutions."""
    performance.cpu_bf16_conv_gradients_are_correct.cache_clear()
    yield
    performance.cpu_bf16_conv_gradients_are_correct.cache_clear()


@pytest.mark.parametrize(("scale", "correct"), [(1.0, True), (1.5, False)])
def test_the_bf16_gradient_probe_tells_right_gradients_from_wrong(
    monkeypatch, uncached_probe, scale, correct
):
    patch_conv3d_under_autocast(monkeypatch, scale)
    assert performance.cpu_bf16_conv_gradients_are_correct() is correct


def bf16_step(conv: torch.nn.Conv3d, inputs: torch.Tensor) -> tuple[torch.dtype, torch.Tensor]:
    """The output dtype and the weight gradient of `conv` under CPU bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = conv(inputs)
    (weight_grad,) = torch.autograd.grad(output.float().sum(), conv.weight)
    return output.dtype, weight_grad


def maps(channels: int, size: int) -> torch.Tensor:
    return torch.randn(2, channels, size, size, size, generator=torch.Generator().manual_seed(0))


def test_guarded_convolutions_compute_tiny_maps_in_float32_and_the_rest_in_bf16():
    model = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    keys = set(model.state_dict())
    guard_tiny_convolutions(model)
    assert set(model.state_dict()) == keys
    assert all(type(module) is not torch.nn.Conv3d for module in model.modules())
    conv = model.layer4[0].conv2  # 3×3×3
    assert isinstance(conv, TinyMapSafeConv3d)
    assert bf16_step(conv, maps(conv.in_channels, 2))[0] == torch.float32
    assert bf16_step(conv, maps(conv.in_channels, 3))[0] == torch.bfloat16


def test_guarded_tiny_map_gradients_match_float32():
    conv = TinyMapSafeConv3d(64, 64, 3, padding=1, bias=False)
    inputs = maps(64, 2)
    _, guarded = bf16_step(conv, inputs)
    (expected,) = torch.autograd.grad(conv(inputs).sum(), conv.weight)
    torch.testing.assert_close(guarded, expected)


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
    network = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    task = VolumeClassifier(network, channels_last=channels_last)
    task.to(memory_format=torch.contiguous_format)  # as if built for another device
    fit_one_step(task, ToyVolumes(cases=4), tmp_path)
    assert task.network.conv1.weight.is_contiguous(memory_format=memory_format)
    assert task.memory_format == memory_format


@pytest.mark.slow  # torch.compile of the network: several seconds before the first step
def test_compile_compiles_the_network_in_place_and_keeps_checkpoint_keys(tmp_path):
    network = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    task = VolumeClassifier(network, compile=True)
    keys = set(task.state_dict())
    # 32³: after another test's compile of this network in the process (test_models), dynamo
    # compiles with dynamic shapes, and at 16³ inductor's lowering of a strided convolution fails
    fit_one_step(task, ToyVolumes(size=32, cases=4), tmp_path)
    assert task.network._compiled_call_impl is not None
    assert set(task.state_dict()) == keys  # no "_orig_mod." prefix: plain checkpoints load


def test_the_default_optimizer_is_fused_adamw():
    network = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    optimizer = VolumeClassifier(network).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True


@pytest.mark.parametrize("library_correct", [True, False])
def test_the_cpu_bf16_plugin_guards_tiny_convolutions_only_where_the_library_needs_it(
    monkeypatch, library_correct
):
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(performance, "cpu_bf16_conv_gradients_are_correct", lambda: library_correct)
    network = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    assert CpuBf16MixedPrecision().convert_module(network) is network
    guarded = isinstance(network.conv1, TinyMapSafeConv3d)
    assert guarded is not library_correct


def test_the_cpu_bf16_plugin_warns_on_a_cpu_without_native_bf16(native_bf16):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CpuBf16MixedPrecision().convert_module(torch.nn.Linear(1, 1))
    assert len([w for w in caught if "slower" in str(w.message)]) == (0 if native_bf16 else 1)


class OneConvolution(L.LightningModule):
    """Not one of the project's tasks: the plugin guards whatever module it trains."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 2, 3, padding=1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.conv(batch).float().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_plain_trainer_with_the_cpu_bf16_plugin_guards_any_lightning_module(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(performance, "cpu_bf16_conv_gradients_are_correct", lambda: False)
    module = OneConvolution()
    trainer = L.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        plugins=[CpuBf16MixedPrecision()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(torch.randn(2, 2, 4, 4, 4)))
    assert trainer.precision == "bf16-mixed"
    assert isinstance(module.conv, TinyMapSafeConv3d)


@pytest.mark.parametrize(
    ("precision", "device_type", "plugin"),
    [
        ("bf16-mixed", "cpu", CpuBf16MixedPrecision),
        ("bf16", "cpu", CpuBf16MixedPrecision),
        ("bf16-mixed", "cuda", type(None)),
        ("bf16-mixed", None, type(None)),
        ("32-true", "cpu", type(None)),
    ],
)
def test_only_cpu_bf16_mixed_trains_with_the_guarding_plugin(precision, device_type, plugin):
    assert type(precision_plugin(precision, device_type)) is plugin


def test_the_cli_gives_a_cpu_bf16_mixed_run_the_guarding_plugin(toy_config, monkeypatch):
    monkeypatch.setenv(RUN_VERSION_VARIABLE, "run")  # this process's runs are not numbered on
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # as `resnext3d` sets it
    arguments = ["--config", str(toy_config), "--trainer.accelerator", "cpu"]
    for precision, plugin in (("bf16-mixed", CpuBf16MixedPrecision), ("32-true", Precision)):
        cli = ResNeXtCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=[*arguments, "--trainer.precision", precision],
            run=False,
            auto_configure_optimizers=False,
        )
        assert type(cli.trainer.precision_plugin) is plugin
        assert cli.trainer.precision == precision


def test_tasks_return_float32_logits_under_bf16_autocast():
    network = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = VolumeClassifier(network)(torch.randn(2, 4, 16, 16, 16))
    assert logits.dtype == torch.float32
