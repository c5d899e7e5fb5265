"""The planned ResNeXt UNet: strides from the patch and spacing as nnU-Net plans them, a
full-resolution first stage, grouped bottlenecks throughout, and the CLI's plan from the data,
written into the run's config."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from resnext3d import PlannedResNeXtUNet, ResNeXtUNet, create_model
from resnext3d.cli import main
from resnext3d.models import build_network, plan_strides, plan_unet
from resnext3d.models.resnext import Bottleneck

SEG_EXPERIMENT = Path(__file__).parents[1] / "experiments" / "brats_seg.yaml"


def test_isotropic_patches_are_downsampled_until_four_voxels_remain():
    assert plan_strides((128, 128, 128), (1.0, 1.0, 1.0)) == [(2, 2, 2)] * 5
    assert plan_strides((32, 32, 32), (3.0, 3.0, 3.0)) == [(2, 2, 2)] * 3
    assert plan_strides((4, 4, 4), (1.0, 1.0, 1.0)) == []
    assert plan_strides((128, 128, 128), (1.0, 1.0, 1.0), max_downsamplings=2) == [(2, 2, 2)] * 2


def test_thick_slices_keep_their_resolution_until_the_other_axes_catch_up():
    strides = plan_strides((32, 256, 256), (5.0, 0.8, 0.8))
    assert strides[:2] == [(1, 2, 2), (1, 2, 2)]  # 0.8 -> 1.6 -> 3.2 mm: then within 2× of 5
    assert strides[2] == (2, 2, 2)
    slice_axis_total = 1
    for stride in strides:
        slice_axis_total *= stride[0]
    assert 32 // slice_axis_total == 4


def test_odd_sizes_stop_their_axis_so_the_patch_stays_divisible():
    strides = plan_strides((36, 32, 32), (1.0, 1.0, 1.0))
    total = [1, 1, 1]
    for stride in strides:
        total = [t * s for t, s in zip(total, stride, strict=True)]
    assert total == [4, 8, 8]  # 36 -> 18 -> 9 stops; 32 -> 4
    assert 36 % total[0] == 0


def test_plan_strides_rejects_bad_spacings():
    with pytest.raises(ValueError, match="one entry per axis"):
        plan_strides((32, 32, 32), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        plan_strides((32, 32, 32), (1.0, 0.0, 1.0))


def test_the_planned_unet_has_a_full_resolution_stage_and_grouped_bottlenecks():
    model = PlannedResNeXtUNet("resnext_unet_s", patch_size=(32, 32, 32), spacing=(3.0, 3.0, 3.0))
    assert model.encoder.feature_info.reduction() == [1, 2, 4, 8]
    assert model.encoder.feature_info.channels() == [32, 64, 128, 256]
    bottlenecks = [m for m in model.encoder.modules() if isinstance(m, Bottleneck)]
    assert len(bottlenecks) == sum((1, 2, 2, 3))
    assert {block.conv2.groups for block in bottlenecks} == {8}
    # Each decoder stage is as wide as its skip, a grouped bottleneck with the encoder's groups
    # at that width; no extra stage on the raw input.
    assert [stage.convs[0].conv.out_channels for stage in model.stages] == [128, 64, 32]
    decoder_blocks = [stage.convs[1] for stage in model.stages]
    assert all(isinstance(block, Bottleneck) for block in decoder_blocks)
    assert [block.conv2.groups for block in decoder_blocks] == [8, 8, 8]
    encoder = model.encoder
    assert [block.conv2.in_channels for block in decoder_blocks] == [
        stage[0].conv2.in_channels for stage in (encoder.layer3, encoder.layer2, encoder.layer1)
    ]
    assert model.input_skip is None
    x = torch.randn(2, 4, 32, 32, 32)
    assert model(x).shape == (2, 3, 32, 32, 32)


def test_the_decoder_can_use_two_convolutions_instead():
    model = PlannedResNeXtUNet(
        "resnext_unet_s", patch_size=(16,) * 3, spacing=(1,) * 3, decoder_block="conv"
    )
    assert not any(isinstance(m, Bottleneck) for m in model.stages.modules())
    assert model(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="decoder block"):
        PlannedResNeXtUNet("resnext_unet_s", (16,) * 3, (1,) * 3, decoder_block="dense")


def test_an_anisotropic_plan_decodes_to_the_input_size_with_deep_supervision():
    model = PlannedResNeXtUNet(
        "resnext_unet_s",
        patch_size=(8, 32, 32),
        spacing=(4.0, 1.0, 1.0),
        layers=(1, 1, 1, 1, 1),
        deep_supervision=True,
    )
    assert model.encoder.feature_info.strides()[-1] == (2, 8, 8)
    output = model(torch.randn(1, 4, 8, 32, 32))
    assert output.shape == (1, 3, 3, 8, 32, 32)  # final, then two heads
    model.eval()
    assert model(torch.randn(1, 4, 8, 32, 32)).shape == (1, 3, 8, 32, 32)


def test_overrides_change_the_preset_and_mistakes_are_named():
    model = PlannedResNeXtUNet(
        "resnext_unet_m", patch_size=(16, 16, 16), spacing=(1, 1, 1), cardinality=4
    )
    assert model.encoder.cardinality == 4
    assert model.encoder.layers == (1, 3, 4)
    with pytest.raises(ValueError, match="resnext_unet_m"):
        PlannedResNeXtUNet("resnext_unet_n", patch_size=(16, 16, 16), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="plans 4 stages"):
        PlannedResNeXtUNet("resnext_unet_s", patch_size=(32,) * 3, spacing=(1,) * 3, layers=(1, 1))


def test_encoders_take_any_number_of_stages():
    encoder = create_model(
        "resnext14_tiny",
        in_channels=4,
        features_only=True,
        layers=(1, 1, 1),
        channels=(32, 64, 128),
        strides=(1, 2, 2),
    )
    assert encoder.feature_info.reduction() == [2, 4, 8, 16]
    assert [f.shape[1] for f in encoder(torch.randn(1, 4, 32, 32, 32))] == [32, 128, 256, 512]
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model("resnext14_tiny", layers=(1, 1, 1))


def test_an_input_skip_needs_an_encoder_below_full_resolution():
    encoder = create_model(
        "resnext14_tiny", in_channels=4, features_only=True, stem_stride=1, no_max_pool=True
    )
    with pytest.raises(ValueError, match="input_skip"):
        ResNeXtUNet(encoder, decoder_channels=None, input_skip=True)
    model = ResNeXtUNet(encoder, decoder_channels=None)
    assert model(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_the_plan_is_a_plain_unet_written_out_in_json():
    plan = plan_unet("resnext_unet_s", patch_size=(32, 32, 32), spacing=(3.0, 3.0, 3.0))
    assert json.loads(json.dumps(plan)) == plan  # a config's, a plans.json's types
    assert plan["class_path"] == "resnext3d.ResNeXtUNet"
    encoder = plan["init_args"]["encoder"]
    assert encoder["class_path"] == "resnext3d.ResNeXtFeatures"
    assert encoder["init_args"]["preset"] is None
    assert encoder["init_args"]["layers"] == [1, 2, 2, 3]
    assert encoder["init_args"]["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert encoder["init_args"]["channels"] == [8, 16, 32, 64]  # planes: 32…256 channels out
    assert plan["init_args"]["decoder_channels"] == [128, 64, 32]
    planned = PlannedResNeXtUNet("resnext_unet_s", patch_size=(32,) * 3, spacing=(3.0,) * 3)
    built = build_network(plan)
    assert type(built) is ResNeXtUNet
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in planned.state_dict().items()
    }


def test_blocks_the_former_name_of_layers_still_plans_the_same_network():
    old = plan_unet("resnext_unet_m", (16, 16, 16), (1, 1, 1), blocks=(1, 1, 2))
    assert old == plan_unet("resnext_unet_m", (16, 16, 16), (1, 1, 1), layers=(1, 1, 2))
    with pytest.raises(ValueError, match="former name"):
        plan_unet("resnext_unet_m", (16,) * 3, (1,) * 3, blocks=(1, 1, 2), layers=(1, 1, 2))


def tiny_seg_fit(tiny_phantom, *overrides):
    main([
        "fit", "--config", str(SEG_EXPERIMENT),
        "--model.init_args.network.init_args.preset", "resnext_unet_s",
        "--data.init_args.data_dir", str(tiny_phantom),
        "--data.init_args.num_workers", "0",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1",
        *overrides,
    ])  # fmt: skip
    (run,) = Path("runs/brats_seg").iterdir()
    return run


def upsampling_kernels(checkpoint: Path, stages: int) -> list[tuple[int, ...]]:
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    return [
        tuple(weights[f"network.stages.{i}.upsample.deconv.weight"].shape[2:])
        for i in range(stages)
    ]


def test_the_cli_plans_the_network_from_the_data_crops_and_spacing(tiny_phantom, in_tmp_dir):
    run = tiny_seg_fit(
        tiny_phantom, "--data.init_args.roi_size", "[16, 32, 32]",
        "--data.init_args.spacing", "[6.0, 3.0, 3.0]",
    )  # fmt: skip
    # The transposed convolutions' kernels are the planned strides, deepest first: 6 mm slices
    # wait for the 3 mm axes to reach 6 mm, and the 16-voxel axis stops at 4.
    kernels = upsampling_kernels(run / "checkpoints" / "last.ckpt", stages=3)
    assert kernels == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    # The run's config records the plan, not the request: the network, whatever crop it is
    # later given.
    network = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["network"]
    assert network["class_path"] == "resnext3d.ResNeXtUNet"
    encoder = network["init_args"]["encoder"]["init_args"]
    assert encoder["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert encoder["channels"] == [8, 16, 32, 64]
    assert encoder["layers"] == [1, 2, 2, 3]
    assert network["init_args"]["decoder_channels"] == [128, 64, 32]


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_a_run_validated_on_other_crops_keeps_its_network(tiny_phantom, in_tmp_dir):
    run = tiny_seg_fit(tiny_phantom)  # 32³ at 3 mm: three 2×2×2 downsamplings
    # 64³ would plan a fourth downsampling: a network the checkpoint's weights do not fit.
    main(["validate", "--run", str(run), "--data.init_args.roi_size", "[64, 64, 64]",
          "--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "1"])  # fmt: skip
    (validation,) = (p for p in Path("runs/brats_seg").iterdir() if p != run)
    config = yaml.safe_load((validation / "config.yaml").read_text())
    encoder = config["model"]["init_args"]["network"]["init_args"]["encoder"]["init_args"]
    assert encoder["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert config["data"]["init_args"]["roi_size"] == [64, 64, 64]


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_a_run_configured_before_plans_were_written_still_loads(tiny_phantom, in_tmp_dir):
    run = tiny_seg_fit(tiny_phantom)
    # Its config as such runs saved it: the request, with the former name of the layers.
    config_file = run / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["model"]["init_args"]["network"] = {
        "class_path": "resnext3d.PlannedResNeXtUNet",
        "init_args": {"preset": "resnext_unet_s", "blocks": None, "group_width": None,
                      "norm": "batch", "deep_supervision": False},
    }  # fmt: skip
    config_file.write_text(yaml.safe_dump(config))
    main(["validate", "--run", str(run), "--data.init_args.num_workers", "0",
          "--trainer.limit_val_batches", "1"])  # fmt: skip
    (validation,) = (p for p in Path("runs/brats_seg").iterdir() if p != run)
    network = yaml.safe_load((validation / "config.yaml").read_text())["model"]["init_args"][
        "network"
    ]
    assert network["class_path"] == "resnext3d.ResNeXtUNet"
