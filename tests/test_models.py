import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fixtures.reference_weights import reference_input, reference_state_dict

import resnext3d
from resnext3d.models import PRESETS, ResNeXt, ResNeXtFeatures, count_parameters, load_pretrained
from resnext3d.models.families import FAMILIES
from resnext3d.models.resnext import BasicBlock, Bottleneck
from resnext3d.models.weights import adapt_input_channels, inflate_kernel, read_state_dict

TORCHVISION = json.loads(
    (Path(__file__).parent / "fixtures" / "torchvision_resnext50_32x4d.json").read_text()
)
# Presets cheap enough to run forward and backward at 32³ on a 2-core CPU in the suite.
CHEAP_PRESETS = ["resnet18", "resnet50", "resnext14_tiny", "resnext26_32x4d", "resnext50_32x4d"]


def volume(batch=2, channels=4, size=32):
    return torch.randn(batch, channels, size, size, size)


def test_parameter_counts_match_torchvision_and_3d_template():
    model_2d = resnext3d.create_model("resnext50_32x4d", spatial_dims=2, in_channels=3)
    model_3d = resnext3d.create_model("resnext50_32x4d", in_channels=4, num_classes=2)
    assert count_parameters(model_2d) == 25_028_904
    assert count_parameters(model_3d) == 25_891_714


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_2d_model_is_torchvision_resnext50_key_for_key_and_output_for_output():
    model = resnext3d.create_model("resnext50_32x4d", spatial_dims=2).double().eval()
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == TORCHVISION["state_dict_shapes"]

    shapes = {key: torch.Size(shape) for key, shape in TORCHVISION["state_dict_shapes"].items()}
    model.load_state_dict(reference_state_dict(shapes), strict=True)
    with torch.no_grad():
        logits = model(reference_input(tuple(TORCHVISION["input_shape"])))
    torch.testing.assert_close(logits, torch.tensor(TORCHVISION["logits"], dtype=torch.float64))


@pytest.mark.parametrize("name", CHEAP_PRESETS)
def test_cheap_presets_run_forward_and_backward_at_32_cubed(name):
    model = resnext3d.create_model(name, in_channels=4, num_classes=3)
    logits = model(volume())
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# The published families' presets are built in tests/test_weight_families.py, key by key.
FAMILY_PRESETS = {name for family in FAMILIES.values() for name in family.presets()}


@pytest.mark.parametrize("name", sorted(set(PRESETS) - set(CHEAP_PRESETS) - FAMILY_PRESETS))
def test_large_presets_build_and_run_on_the_meta_device(name):
    with torch.device("meta"):
        model = resnext3d.create_model(name, in_channels=4, num_classes=2)
        logits = model(torch.empty(2, 4, 64, 64, 64))
    assert logits.shape == (2, 2)
    assert count_parameters(model) > 10_000_000  # MedicalNet's ResNet-10 has 14 M


def test_feature_maps_and_feature_info_of_the_3d_encoder():
    encoder = resnext3d.create_model("resnext50_32x4d", in_channels=4, features_only=True).eval()
    assert encoder.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert encoder.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        features = encoder(volume(batch=1, size=64))
    for feature, channels, reduction in zip(
        features, encoder.feature_info.channels(), encoder.feature_info.reduction(), strict=True
    ):
        assert feature.shape == (1, channels, *(3 * [64 // reduction]))


def test_out_indices_select_feature_maps_and_deeper_stages_do_not_run():
    encoder = ResNeXtFeatures("resnext14_tiny", in_channels=4, out_indices=(1, 3))
    stage_4_calls = []
    encoder.layer4.register_forward_hook(lambda *_: stage_4_calls.append(1))
    features = encoder(volume())
    assert [f.shape[1] for f in features] == encoder.feature_info.channels() == [128, 512]
    assert encoder.feature_info.reduction() == [4, 16]
    assert not stage_4_calls


def test_the_encoder_has_no_classifier():
    encoder = resnext3d.create_model("resnext14_tiny", features_only=True)
    assert isinstance(encoder, ResNeXtFeatures)
    assert not any(key.startswith("fc.") for key in encoder.state_dict())
    for classifier_argument in ({"num_classes": 2}, {"drop_rate": 0.5}):
        with pytest.raises(TypeError, match=next(iter(classifier_argument))):
            ResNeXtFeatures("resnext14_tiny", **classifier_argument)


def test_forward_intermediates_takes_maps_as_timm_does():
    model = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=2).eval()
    x = volume(batch=1)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape[1:] for m in maps] == [
            (channels, *3 * [32 // reduction])
            for channels, reduction in zip(
                model.feature_info.channels(), model.feature_info.reduction(), strict=True
            )
        ]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape[1] for m in last_two] == [512, 1024]
        chosen = model.forward_intermediates(x, indices=(-2, 0), intermediates_only=True)
        assert [m.shape[1] for m in chosen] == [32, 512]  # shallowest first
        final, (stage_1,) = model.forward_intermediates(x, indices=(1,), stop_early=True)
        assert final is stage_1
    for indices in [(5,), (1, -4), (), 0, 6]:
        with pytest.raises(ValueError, match="feature maps|feature map indices"):
            model.forward_intermediates(x, indices=indices)


def test_anisotropic_strides_are_reported_per_axis():
    encoder = resnext3d.create_model(
        "resnext14_tiny",
        in_channels=4,
        features_only=True,
        stem_stride=(1, 2, 2),
        strides=(1, (1, 2, 2), 2, 2),
    )
    features = encoder(torch.randn(2, 4, 16, 64, 64))
    assert encoder.feature_info.strides() == [
        (1, 2, 2),
        (1, 4, 4),
        (1, 8, 8),
        (2, 16, 16),
        (4, 32, 32),
    ]
    assert encoder.feature_info.reduction()[0] == (1, 2, 2)
    for feature, stride in zip(features, encoder.feature_info.strides(), strict=True):
        assert feature.shape[2:] == (16 // stride[0], 64 // stride[1], 64 // stride[2])


def test_no_max_pool_keeps_stage_one_at_stem_resolution():
    encoder = resnext3d.create_model(
        "resnext14_tiny", in_channels=4, features_only=True, no_max_pool=True
    )
    assert encoder.feature_info.reduction() == [2, 2, 4, 8, 16]
    assert encoder(volume())[1].shape[-1] == 16


def test_2d_encoder_gives_2d_feature_maps():
    encoder = resnext3d.create_model(
        "resnext14_tiny", spatial_dims=2, in_channels=1, features_only=True
    )
    features = encoder(torch.randn(2, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ("batch", nn.BatchNorm3d),
        ("instance", nn.InstanceNorm3d),
        (("instance", {"affine": True}), nn.InstanceNorm3d),
        ("group", nn.GroupNorm),
        (("group", {"num_groups": 4}), nn.GroupNorm),
    ],
)
def test_norm_by_name_is_used_in_every_norm_layer(norm, expected):
    model = resnext3d.create_model("resnext14_tiny", in_channels=4, stem_type="deep", norm=norm)
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm)
    for stage in ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]:
        norms = [m for m in model.get_submodule(stage).modules() if isinstance(m, norm_types)]
        assert norms, f"no norm layer in {stage}"
        assert all(type(m) is expected for m in norms), stage
    # stem + 3 per block + one per projection shortcut + 2 in the deep stem
    assert sum(isinstance(m, expected) for m in model.modules()) == 1 + 2 + 4 * 3 + 4
    model(volume(size=64)).sum().backward()  # instance norm needs more than one voxel at stride 32


def test_group_norm_defaults_to_groups_that_divide_the_channels():
    model = resnext3d.create_model("resnext14_tiny", norm="group")
    assert all(
        m.num_channels % m.num_groups == 0 for m in model.modules() if isinstance(m, nn.GroupNorm)
    )


def test_activation_by_name_replaces_every_relu():
    model = resnext3d.create_model("resnext14_tiny", act="gelu", se_reduction=4)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert isinstance(model.act1, nn.GELU)
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 1 + 4 * (3 + 1)


def test_squeeze_excitation_ends_every_block():
    model = resnext3d.create_model("seresnext50_32x4d", in_channels=4, num_classes=2)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(b.se is not None for b in blocks)
    assert count_parameters(model) > 25_891_714


def test_drop_path_rises_linearly_over_blocks():
    model = resnext3d.create_model("resnext26_32x4d", drop_path_rate=0.2)
    rates = [
        getattr(b.drop_path, "drop_prob", 0.0) for b in model.modules() if isinstance(b, Bottleneck)
    ]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == sorted(rates)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_zero_init_last_makes_each_residual_branch_start_at_zero(norm):
    model = resnext3d.create_model("resnext14_tiny", norm=norm)
    block = model.layer2[0]
    if block.bn3.weight is None:  # affine-free norms have no scale to zero
        return
    assert torch.count_nonzero(block.bn3.weight) == 0
    block.eval()
    x = torch.randn(2, 128, 8, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))


def test_basic_blocks_zero_init_their_second_norm():
    model = resnext3d.create_model("resnet18")
    assert all(
        torch.count_nonzero(b.bn2.weight) == 0 for b in model.modules() if isinstance(b, BasicBlock)
    )


@pytest.mark.parametrize("features_only", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(features_only):
    torch.manual_seed(0)
    model = resnext3d.create_model(
        "resnext14_tiny", in_channels=4, norm="instance", features_only=features_only
    ).double()
    x = volume(batch=1, size=48).double()

    def loss() -> torch.Tensor:
        output = model(x)
        return sum(o.sum() for o in output) if features_only else output.sum()

    loss().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    loss().backward()
    for grad, reference in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(grad, reference)


def saved_tensor_shapes(model: torch.nn.Module, x: torch.Tensor) -> set[tuple[int, ...]]:
    shapes = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        shapes.add(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return shapes


def test_gradient_checkpointing_recomputes_the_stem_too():
    model = resnext3d.create_model("resnext14_tiny", in_channels=4)
    x = volume(batch=2, size=32)
    stem_output = (2, 32, 16, 16, 16)  # stem_width channels at stride 2
    assert stem_output in saved_tensor_shapes(model, x)
    model.set_grad_checkpointing(True)
    assert stem_output not in saved_tensor_shapes(model, x)


def test_forward_features_and_forward_head_compose_to_forward():
    model = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=5).eval()
    x = volume()
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 1, 1, 1)
    torch.testing.assert_close(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


def test_reset_classifier_changes_the_number_of_outputs():
    model = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=5)
    model.reset_classifier(2)
    assert model(volume()).shape == (2, 2)
    model.reset_classifier(0)
    assert model(volume()).shape == (2, model.num_features)


def test_center_inflation_reproduces_the_2d_network_on_a_depth_constant_volume():
    model_2d = resnext3d.create_model(
        "resnext14_tiny", spatial_dims=2, in_channels=3, num_classes=7
    )
    _randomize_norms(model_2d)
    model_3d = resnext3d.create_model("resnext14_tiny", in_channels=3, num_classes=7)
    load_pretrained(model_3d, model_2d.state_dict(), inflation="center")
    image = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    depth_constant = image.unsqueeze(2).expand(-1, -1, 12, -1, -1)
    with torch.no_grad():
        expected = model_2d.double().eval()(image)
        actual = model_3d.double().eval()(depth_constant)
    torch.testing.assert_close(actual, expected)


def test_center_inflation_along_the_last_axis_for_monai_volumes():
    model_2d = resnext3d.create_model(
        "resnext14_tiny", spatial_dims=2, in_channels=3, num_classes=7
    )
    _randomize_norms(model_2d)
    model_3d = resnext3d.create_model("resnext14_tiny", in_channels=3, num_classes=7)
    load_pretrained(model_3d, model_2d.state_dict(), inflation="center", depth_axis=2)
    image = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model_2d.double().eval()(image)
        actual = model_3d.double().eval()(image.unsqueeze(-1).expand(-1, -1, -1, -1, 8))
    torch.testing.assert_close(actual, expected)


def test_mean_inflation_spreads_the_kernel_evenly_over_depth():
    kernel = torch.randn(8, 3, 7, 7)
    inflated = inflate_kernel(kernel, depth=7, mode="mean")
    assert inflated.shape == (8, 3, 7, 7, 7)
    torch.testing.assert_close(inflated.sum(dim=2), kernel)
    torch.testing.assert_close(inflated[:, :, 0], inflated[:, :, 6])


def test_weight_file_with_ddp_prefix_and_checkpoint_nesting_loads(tmp_path):
    source = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=2)
    path = tmp_path / "weights.pt"
    wrapped = {f"module.{key}": value for key, value in source.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    target = resnext3d.create_model(
        "resnext14_tiny", in_channels=4, num_classes=2, checkpoint_path=str(path)
    )
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_rgb_weights_into_a_four_channel_stem_repeat_and_rescale():
    rgb = resnext3d.create_model("resnext14_tiny", spatial_dims=2, in_channels=3)
    brats = resnext3d.create_model("resnext14_tiny", spatial_dims=2, in_channels=4)
    load_pretrained(brats, rgb.state_dict())
    source, loaded = rgb.conv1.weight, brats.conv1.weight
    torch.testing.assert_close(loaded[:, :3], source * 3 / 4)
    torch.testing.assert_close(loaded[:, 3], source[:, 0] * 3 / 4)
    torch.testing.assert_close(adapt_input_channels(source, 1), source.sum(1, keepdim=True))


def test_classifier_of_another_size_keeps_its_initialisation():
    imagenet = resnext3d.create_model("resnext14_tiny", spatial_dims=2, num_classes=1000)
    model = resnext3d.create_model("resnext14_tiny", spatial_dims=2, num_classes=2)
    before = model.fc.weight.clone()
    load_pretrained(model, imagenet.state_dict())
    torch.testing.assert_close(model.fc.weight, before)
    torch.testing.assert_close(model.layer4[0].conv2.weight, imagenet.layer4[0].conv2.weight)
    encoder = resnext3d.create_model("resnext14_tiny", spatial_dims=2, features_only=True)
    load_pretrained(encoder, imagenet.state_dict())


def test_mismatched_weights_name_the_key():
    narrow = resnext3d.create_model("resnext14_tiny", cardinality=4)
    model = resnext3d.create_model("resnext14_tiny")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight: weights of shape \(16, 32"):
        load_pretrained(model, narrow.state_dict())


def test_unsafe_or_foreign_weight_files_are_refused_with_their_name(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(2, 2)}, pickled)
    with pytest.raises(ValueError, match="pickled.pt"):
        read_state_dict(pickled)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match="notes.pt"):
        read_state_dict(text)


@pytest.mark.slow  # torch.compile: seconds of compiling
def test_fx_tracing_and_torch_compile_reproduce_the_eager_output():
    model = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=2).eval()
    x = volume()
    with torch.no_grad():
        expected = model(x)
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), expected)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="resnext50_32x4d") as error:
        resnext3d.create_model("resnext50_32x8d")
    assert "Did you mean" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"block": "basic", "cardinality": 32, "base_width": 4}, "cardinality=1 and base_width=64"),
        ({"cardinality": 0}, "positive"),
        ({"base_width": 1, "channels": (16, 32, 64, 128)}, "groups of no channels"),
        ({"layers": (1, 1, 1)}, "one entry per stage"),
        ({"block": "dense"}, "block must be one of"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNeXt(**kwargs)


def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial running statistics and scales, so inflation is tested on more than identities."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(1 + 0.1 * torch.rand(n, generator=generator))
            module.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=generator))


def test_torch_export_reproduces_the_eager_output_and_torchscript_is_unsupported():
    """Deployment goes through torch.export (TorchScript is in maintenance in PyTorch and is not
    supported here: the README says so); if scripting ever starts to work, say so there."""
    model = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=2).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    with pytest.raises(Exception):  # noqa: B017 - whichever error TorchScript raises
        torch.jit.script(model)
