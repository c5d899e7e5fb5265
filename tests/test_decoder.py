import pytest
import torch
import torch.nn as nn
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNetEncoder

import resnext3d
from resnext3d.models import PRESETS, ResNeXt
from resnext3d.models.decoder import ResNeXtUNet
from resnext3d.models.flexible_unet import ResNeXtFlexibleUNetEncoder

TINY = "resnext14_tiny"
ANISOTROPIC = {"stem_stride": (1, 2, 2), "strides": (1, (1, 2, 2), 2, 2)}


def volume(*spatial, batch=1, channels=4):
    return torch.randn(batch, channels, *spatial)


def encoder(name=TINY, **kwargs):
    return resnext3d.create_model(name, features_only=True, **{"in_channels": 4, **kwargs})


@torch.no_grad()
def infer(model, x):
    return model.eval()(x)


@pytest.mark.parametrize("name", [TINY, "resnet18", "resnext50_32x4d"])
def test_output_has_the_input_size_for_several_presets(name):
    model = ResNeXtUNet(encoder(name), out_channels=3)
    assert infer(model, volume(32, 32, 32)).shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize("spatial", [(64, 32, 96), (32, 64, 32)])
@pytest.mark.parametrize("upsample", ["deconv", "nontrainable"])
def test_output_has_the_input_size_for_non_cubic_inputs(spatial, upsample):
    model = ResNeXtUNet(encoder(), out_channels=2, upsample=upsample)
    assert infer(model, volume(*spatial)).shape == (1, 2, *spatial)


@pytest.mark.parametrize("upsample", ["deconv", "nontrainable"])
def test_anisotropic_strides_upsample_by_each_axis_ratio(upsample):
    model = ResNeXtUNet(encoder(**ANISOTROPIC), upsample=upsample)
    assert model.encoder.feature_info.strides() == [
        (1, 2, 2),
        (1, 4, 4),
        (1, 8, 8),
        (2, 16, 16),
        (4, 32, 32),
    ]
    assert infer(model, volume(16, 64, 64)).shape == (1, 3, 16, 64, 64)
    if upsample == "deconv":
        strides = [stage.upsample.deconv.stride for stage in model.stages]
        assert strides == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)]


def test_2d_unet():
    model = ResNeXtUNet(encoder(in_channels=3, spatial_dims=2), out_channels=5)
    assert infer(model, volume(64, 96, channels=3)).shape == (1, 5, 64, 96)
    assert all(not isinstance(m, nn.Conv3d) for m in model.modules())


def test_first_feature_at_stride_4_still_decodes_to_full_resolution():
    stride_4 = encoder(out_indices=(1, 2))
    model = ResNeXtUNet(stride_4, out_channels=1, decoder_channels=(32, 16))
    assert model.encoder is stride_4
    assert infer(model, volume(32, 32, 32)).shape == (1, 1, 32, 32, 32)


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_deep_supervision_stacks_upsampled_logits_in_training_and_backward_reaches_all():
    model = ResNeXtUNet(encoder(), out_channels=3, deep_supervision=True, deep_supervision_heads=3)
    # Batch 2: training-mode batch norm needs more than one value per channel at the 1³ bottom.
    x = volume(32, 32, 32, batch=2)
    stacked = model(x)
    assert stacked.shape == (2, 4, 3, 32, 32, 32)
    stacked.mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []

    with torch.no_grad():
        # Index 0 is the final output: the same as without deep supervision.
        model.deep_supervision = False
        torch.testing.assert_close(stacked[:, 0], model(x))
        assert not torch.allclose(stacked[:, 1], stacked[:, 0])
    model.deep_supervision = True
    assert infer(model, x).shape == (2, 3, 32, 32, 32)


def test_deep_supervision_heads_must_leave_the_final_stage():
    with pytest.raises(ValueError, match="deep_supervision_heads must be between 1 and 4"):
        ResNeXtUNet(encoder(), deep_supervision=True, deep_supervision_heads=5)


@pytest.mark.parametrize(
    ("encoder_kwargs", "spatial", "message"),
    [
        ({}, (64, 32, 48), "input size 48 along spatial axis 2 .* not a multiple of 32"),
        ({}, (32, 48, 32), "input size 48 along spatial axis 1 .* not a multiple of 32"),
        (ANISOTROPIC, (18, 64, 64), "input size 18 along spatial axis 0 .* not a multiple of 4"),
    ],
)
def test_sizes_the_total_stride_does_not_divide_are_rejected(encoder_kwargs, spatial, message):
    model = ResNeXtUNet(encoder(**encoder_kwargs))
    with pytest.raises(ValueError, match=message):
        infer(model, volume(*spatial))


def test_norm_and_act_by_name_reach_every_decoder_layer():
    model = ResNeXtUNet(encoder(norm="instance"), norm="group", act="prelu")
    decoder = [model.input_skip, *model.stages]
    norms = [m for part in decoder for m in part.modules() if isinstance(m, nn.GroupNorm)]
    acts = [m for part in decoder for m in part.modules() if isinstance(m, nn.PReLU)]
    assert len(norms) == len(acts) == 1 + 2 * len(model.stages)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert any(isinstance(m, nn.InstanceNorm3d) for m in model.encoder.modules())
    assert infer(model, volume(64, 32, 32)).shape == (1, 3, 64, 32, 32)


def test_mismatched_arguments_are_rejected():
    with pytest.raises(ValueError, match="one entry per decoder stage \\(5, deepest first\\)"):
        ResNeXtUNet(encoder(), decoder_channels=(64, 32, 16))
    with pytest.raises(TypeError, match="ResNeXtFeatures.* not a ResNeXt"):
        ResNeXtUNet(resnext3d.create_model(TINY, in_channels=4))


def test_the_input_skip_takes_the_encoders_input_channels():
    model = ResNeXtUNet(encoder(in_channels=1))
    assert infer(model, volume(32, 32, 32, channels=1)).shape == (1, 3, 32, 32, 32)


def test_encoder_is_exposed_for_pretrained_weights():
    model = ResNeXtUNet(encoder())
    source = encoder()
    resnext3d.load_pretrained(model.encoder, source.state_dict())
    torch.testing.assert_close(model.encoder.conv1.weight, source.conv1.weight)


# MONAI's FlexibleUNet with our encoders (registered by importing resnext3d.models.flexible_unet).


def test_flexible_unet_builds_our_encoder_at_full_resolution():
    model = FlexibleUNet(in_channels=4, out_channels=3, backbone="resnext50_32x4d", spatial_dims=3)
    assert isinstance(model.encoder, ResNeXt)
    assert model.encoder.conv1.in_channels == 4
    assert infer(model, volume(32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_flexible_unet_2d_and_non_cubic():
    model = FlexibleUNet(4, 2, backbone=TINY, spatial_dims=2)
    assert infer(model, volume(64, 96)).shape == (1, 2, 64, 96)
    with pytest.raises(ValueError, match="input size 80 along spatial axis 1"):
        model(volume(64, 80))


def test_names_monai_already_has_stay_monai_and_ours_get_a_prefix():
    registered = FLEXUNET_BACKBONE.register_dict
    assert registered["resnet50"]["type"] is ResNetEncoder
    # The weight families' presets (MedicalNet's stride-8 features, ...) do not fit its decoder.
    families = ("medicalnet_", "kinetics_", "r3d_")
    for preset in PRESETS:
        name = f"resnext3d_{preset}"
        if preset.startswith(families):
            assert name not in registered
        else:
            assert registered[name]["type"] is ResNeXtFlexibleUNetEncoder
    assert registered["resnext50_32x4d"]["type"] is ResNeXtFlexibleUNetEncoder
    model = FlexibleUNet(4, 3, backbone="resnext3d_resnet18", spatial_dims=3)
    assert isinstance(model.encoder, ResNeXt)


def test_registered_channels_are_those_of_the_built_encoders():
    registered = FLEXUNET_BACKBONE.register_dict
    for name, preset in ResNeXtFlexibleUNetEncoder.backbone_presets.items():
        with torch.device("meta"):
            encoder = ResNeXtFlexibleUNetEncoder(preset)
        assert registered[name]["feature_channel"] == tuple(encoder.feature_info.channels())
        assert encoder.feature_info.reduction() == [2, 4, 8, 16, 32]


def test_flexible_unet_pretrained_takes_a_checkpoint_path_not_true(tmp_path):
    with pytest.raises(ValueError, match="no weights to download"):
        FlexibleUNet(4, 3, backbone=TINY, spatial_dims=3, pretrained=True)
    source = encoder()
    torch.save(source.state_dict(), tmp_path / "encoder.pt")
    model = FlexibleUNet(4, 3, backbone=TINY, spatial_dims=3, pretrained=tmp_path / "encoder.pt")
    torch.testing.assert_close(model.encoder.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
