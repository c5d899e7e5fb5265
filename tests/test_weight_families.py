"""The published 3D weight families load into their presets (resnext3d.models.families).

No weights can be downloaded here, so each family's state dict is written out by hand from its
public model code: the same key names and shapes, random values. The forward passes each family's
code computes are written out too, functionally, from those tensors alone, and our presets must
give the same outputs.
"""

import logging

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser

import resnext3d
from resnext3d.models import load_pretrained
from resnext3d.models.families import FAMILIES
from resnext3d.models.presets import PRESETS

DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
PLANES = (64, 128, 256, 512)


# --- The families' state dicts: key names and shapes as their model code builds them. ---------


def _norm(shapes: dict, name: str, channels: int) -> None:
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{suffix}"] = (channels,)
    shapes[f"{name}.num_batches_tracked"] = ()


def hara_resnet_shapes(
    depth: int,
    in_channels: int = 3,
    stem_kernel: tuple = (7, 7, 7),
    zero_pad_shortcuts: bool = False,
    dilated: bool = False,
    layers: tuple | None = None,
) -> dict[str, tuple]:
    """MedicalNet's and 3D-ResNets-PyTorch's ResNets (their ``models/resnet.py``): ``conv1``
    and ``bn1``, then ``layer{1-4}`` of BasicBlocks (conv1, bn1, conv2, bn2) or Bottlenecks
    (conv1 1×1, conv2 3×3, conv3 1×1, expansion 4), shortcut B a ``downsample`` Sequential of a
    1×1 conv and a norm wherever the stride or the width changes; MedicalNet's layer3 and layer4
    have stride 1 (dilated), so their first block changes only the width."""
    block, default_layers = DEPTHS[depth]
    expansion = 1 if block == "basic" else 4
    shapes = {"conv1.weight": (64, in_channels, *stem_kernel)}
    _norm(shapes, "bn1", 64)
    in_planes = 64
    strides = (1, 2, 1, 1) if dilated else (1, 2, 2, 2)
    for stage, (planes, depth_, stride) in enumerate(
        zip(PLANES, layers or default_layers, strides, strict=True), start=1
    ):
        for index in range(depth_):
            name = f"layer{stage}.{index}"
            if block == "basic":
                shapes[f"{name}.conv1.weight"] = (planes, in_planes, 3, 3, 3)
                _norm(shapes, f"{name}.bn1", planes)
                shapes[f"{name}.conv2.weight"] = (planes, planes, 3, 3, 3)
                _norm(shapes, f"{name}.bn2", planes)
            else:
                shapes[f"{name}.conv1.weight"] = (planes, in_planes, 1, 1, 1)
                _norm(shapes, f"{name}.bn1", planes)
                shapes[f"{name}.conv2.weight"] = (planes, planes, 3, 3, 3)
                _norm(shapes, f"{name}.bn2", planes)
                shapes[f"{name}.conv3.weight"] = (planes * 4, planes, 1, 1, 1)
                _norm(shapes, f"{name}.bn3", planes * 4)
            changes = index == 0 and (stride != 1 or in_planes != planes * expansion)
            if changes and not zero_pad_shortcuts:
                shapes[f"{name}.downsample.0.weight"] = (planes * expansion, in_planes, 1, 1, 1)
                _norm(shapes, f"{name}.downsample.1", planes * expansion)
            in_planes = planes * expansion
    return shapes


def medicalnet_shapes(
    depth: int, segmentation_classes: int = 2, head: bool = True, layers: tuple | None = None
) -> dict:
    """MedicalNet's ResNet (Tencent/MedicalNet ``models/resnet.py``): one input channel, a 7³
    stem of stride 2, dilated layer3/4, shortcut A for ResNet-18/34 (its README's settings),
    and the ``conv_seg`` head (ConvTranspose3d with bias, BN, ReLU, 3³ conv, BN, ReLU, 1³ conv)."""
    shapes = hara_resnet_shapes(
        depth, in_channels=1, zero_pad_shortcuts=depth in (18, 34), dilated=True, layers=layers
    )
    if head:
        features = 512 * (1 if DEPTHS[depth][0] == "basic" else 4)
        shapes["conv_seg.0.weight"] = (features, 32, 2, 2, 2)
        shapes["conv_seg.0.bias"] = (32,)
        _norm(shapes, "conv_seg.1", 32)
        shapes["conv_seg.3.weight"] = (32, 32, 3, 3, 3)
        _norm(shapes, "conv_seg.4", 32)
        shapes["conv_seg.6.weight"] = (segmentation_classes, 32, 1, 1, 1)
    return shapes


def kinetics_resnet_shapes(depth: int, classes: int = 700, **kwargs) -> dict:
    """3D-ResNets-PyTorch's ResNet (``models/resnet.py``, the 2020 release): three input
    channels, a (7, 7, 7) stem, shortcut B, an ``fc`` head."""
    shapes = hara_resnet_shapes(depth, **kwargs)
    features = 512 * (1 if DEPTHS[depth][0] == "basic" else 4)
    shapes["fc.weight"], shapes["fc.bias"] = (classes, features), (classes,)
    return shapes


def kinetics_resnext_shapes(layers: tuple = (3, 4, 23, 3), classes: int = 400) -> dict:
    """3D-ResNets-PyTorch's ResNeXt (``models/resnext.py``): ResNeXtBottleneck of expansion 2
    on planes 128…1024, ``mid_planes = cardinality * planes // 32`` in a 32-group 3³ conv."""
    shapes = {"conv1.weight": (64, 3, 7, 7, 7)}
    _norm(shapes, "bn1", 64)
    in_planes, cardinality = 64, 32
    for stage, (planes, depth) in enumerate(zip((128, 256, 512, 1024), layers, strict=True), 1):
        mid = cardinality * planes // 32
        for index in range(depth):
            name = f"layer{stage}.{index}"
            shapes[f"{name}.conv1.weight"] = (mid, in_planes, 1, 1, 1)
            _norm(shapes, f"{name}.bn1", mid)
            shapes[f"{name}.conv2.weight"] = (mid, mid // cardinality, 3, 3, 3)
            _norm(shapes, f"{name}.bn2", mid)
            shapes[f"{name}.conv3.weight"] = (planes * 2, mid, 1, 1, 1)
            _norm(shapes, f"{name}.bn3", planes * 2)
            if index == 0:  # stride 2, or 64 -> 256 channels in layer1
                shapes[f"{name}.downsample.0.weight"] = (planes * 2, in_planes, 1, 1, 1)
                _norm(shapes, f"{name}.downsample.1", planes * 2)
            in_planes = planes * 2
    shapes["fc.weight"], shapes["fc.bias"] = (classes, cardinality * 32 * 2), (classes,)
    return shapes


def r3d_18_shapes(classes: int = 400) -> dict:
    """torchvision's ``r3d_18`` (``torchvision/models/video/resnet.py``): ``stem`` = Conv3d(3,
    64, (3, 7, 7)), BN, ReLU; BasicBlock's ``conv1`` = (Conv3DSimple, BN, ReLU) and ``conv2`` =
    (Conv3DSimple, BN) Sequentials; ``downsample`` (1³ conv, BN) in layer2-4; ``fc`` 512 -> 400."""
    shapes = {"stem.0.weight": (64, 3, 3, 7, 7)}
    _norm(shapes, "stem.1", 64)
    in_planes = 64
    for stage, planes in enumerate(PLANES, start=1):
        for index in range(2):
            name = f"layer{stage}.{index}"
            shapes[f"{name}.conv1.0.weight"] = (planes, in_planes, 3, 3, 3)
            _norm(shapes, f"{name}.conv1.1", planes)
            shapes[f"{name}.conv2.0.weight"] = (planes, planes, 3, 3, 3)
            _norm(shapes, f"{name}.conv2.1", planes)
            if index == 0 and stage > 1:
                shapes[f"{name}.downsample.0.weight"] = (planes, in_planes, 1, 1, 1)
                _norm(shapes, f"{name}.downsample.1", planes)
            in_planes = planes
    shapes["fc.weight"], shapes["fc.bias"] = (classes, 512), (classes,)
    return shapes


def r3d_18_to_ours(key: str) -> str:
    """torchvision's r3d_18 names in ours, by hand (independent of the families module)."""
    for theirs, ours in (
        ("stem.0.", "conv1."),
        ("stem.1.", "bn1."),
        (".conv1.0.", ".conv1."),
        (".conv1.1.", ".bn1."),
        (".conv2.0.", ".conv2."),
        (".conv2.1.", ".bn2."),
    ):
        key = key.replace(theirs, ours)
    return key


def random_weights(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of the given shapes; norms with non-trivial scales and statistics."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            weights[key] = torch.tensor(100)
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
            weights[key] = 0.5 + torch.rand(shape, generator=generator)
        elif len(shape) == 1:
            weights[key] = 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = torch.tensor(shape[1:]).prod().item()
            weights[key] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
    return weights


# --- Their forward passes, functionally, from the tensors alone. -------------------------------


def _bn(x, w, name):
    return F.batch_norm(
        x,
        w[f"{name}.running_mean"],
        w[f"{name}.running_var"],
        w[f"{name}.weight"],
        w[f"{name}.bias"],
        training=False,
        eps=1e-5,
    )


def hara_forward(w, x, stem_stride, strides, dilations, zero_pad_shortcuts=False, head=True):
    """MedicalNet's and 3D-ResNets-PyTorch's ResNet forward (their ``forward``), from the
    tensors: stem, max-pool 3³ of stride 2, stages, then (``head``) average pool and ``fc``."""
    stem = w["conv1.weight"]
    x = F.relu(_bn(F.conv3d(x, stem, stride=stem_stride, padding=stem.shape[2] // 2), w, "bn1"))
    x = F.max_pool3d(x, 3, stride=2, padding=1)
    for stage, (stride, dilation) in enumerate(zip(strides, dilations, strict=True), start=1):
        index = 0
        while f"layer{stage}.{index}.conv1.weight" in w:
            name = f"layer{stage}.{index}"
            block_stride = stride if index == 0 else 1
            bottleneck = f"{name}.conv3.weight" in w
            out = F.relu(
                _bn(
                    F.conv3d(
                        x,
                        w[f"{name}.conv1.weight"],
                        stride=1 if bottleneck else block_stride,
                        padding=0 if bottleneck else dilation,
                        dilation=1 if bottleneck else dilation,
                    ),
                    w,
                    f"{name}.bn1",
                )
            )
            conv2 = w[f"{name}.conv2.weight"]
            out = _bn(
                F.conv3d(
                    out,
                    conv2,
                    stride=block_stride if bottleneck else 1,
                    padding=dilation,
                    dilation=dilation,
                    groups=out.shape[1] // conv2.shape[1],
                ),
                w,
                f"{name}.bn2",
            )
            if bottleneck:
                out = _bn(F.conv3d(F.relu(out), w[f"{name}.conv3.weight"]), w, f"{name}.bn3")
            if f"{name}.downsample.0.weight" in w:
                shortcut = _bn(
                    F.conv3d(x, w[f"{name}.downsample.0.weight"], stride=block_stride),
                    w,
                    f"{name}.downsample.1",
                )
            elif zero_pad_shortcuts and (block_stride != 1 or x.shape[1] != out.shape[1]):
                shortcut = F.avg_pool3d(x, kernel_size=1, stride=block_stride)
                zeros = shortcut.new_zeros(
                    shortcut.shape[0], out.shape[1] - shortcut.shape[1], *shortcut.shape[2:]
                )
                shortcut = torch.cat([shortcut, zeros], dim=1)
            else:
                shortcut = x
            x = F.relu(out + shortcut)
            index += 1
    if not head:
        return x
    return F.linear(F.adaptive_avg_pool3d(x, 1).flatten(1), w["fc.weight"], w["fc.bias"])


def r3d_18_forward(w, x):
    """torchvision's VideoResNet.forward for r3d_18, from its tensors."""
    x = F.relu(
        _bn(F.conv3d(x, w["stem.0.weight"], stride=(1, 2, 2), padding=(1, 3, 3)), w, "stem.1")
    )
    for stage in range(1, 5):
        for index in range(2):
            name = f"layer{stage}.{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            out = F.relu(
                _bn(
                    F.conv3d(x, w[f"{name}.conv1.0.weight"], stride=stride, padding=1),
                    w,
                    f"{name}.conv1.1",
                )
            )
            out = _bn(F.conv3d(out, w[f"{name}.conv2.0.weight"], padding=1), w, f"{name}.conv2.1")
            if f"{name}.downsample.0.weight" in w:
                x = _bn(
                    F.conv3d(x, w[f"{name}.downsample.0.weight"], stride=stride),
                    w,
                    f"{name}.downsample.1",
                )
            x = F.relu(out + x)
    return F.linear(F.adaptive_avg_pool3d(x, 1).flatten(1), w["fc.weight"], w["fc.bias"])


# --- Every preset of a family has the family's keys and shapes. ---------------------------------


def _family_layouts():
    for depth in DEPTHS:
        yield f"medicalnet_resnet{depth}", medicalnet_shapes(depth, head=False), 1, str
    for depth in (18, 34, 50, 101, 152, 200):
        yield f"kinetics_resnet{depth}", kinetics_resnet_shapes(depth), 3, str
    yield "kinetics_resnext101_32x4d", kinetics_resnext_shapes(), 3, str
    yield "r3d_18", r3d_18_shapes(), 3, r3d_18_to_ours


@pytest.mark.parametrize(
    ("preset", "shapes", "in_channels", "to_ours"),
    list(_family_layouts()),
    ids=[layout[0] for layout in _family_layouts()],
)
def test_each_family_preset_has_exactly_the_family_keys_and_shapes(
    preset, shapes, in_channels, to_ours
):
    classes = shapes["fc.weight"][0] if "fc.weight" in shapes else 0
    with torch.device("meta"):
        model = resnext3d.create_model(preset, in_channels=in_channels, num_classes=classes)
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {to_ours(key): shape for key, shape in shapes.items()}
    assert ours == theirs


# --- Loading: tensors land where they should, outputs are the family's. -------------------------


def test_r3d_18_gives_torchvision_outputs_from_its_weights():
    weights = random_weights(r3d_18_shapes())
    model = resnext3d.create_model("r3d_18", num_classes=400)
    report = load_pretrained(model, weights)
    assert report.family == "torchvision_video"
    assert report.family_from == "detected from its stem.0.* keys"
    assert not report.adapted and not report.left_at_init and not report.unused
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[r3d_18_to_ours(key)], value), key
    clip = torch.randn(2, 3, 8, 16, 16)
    with torch.no_grad():
        expected = r3d_18_forward(weights, clip)
        actual = model.eval()(clip)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize(("depth", "layers"), [(10, None), (18, None), (50, (1, 1, 1, 1))])
def test_medicalnet_backbone_gives_its_dilated_features(depth, layers, tmp_path):
    """ResNet-10 has projection shortcuts, ResNet-18 zero-padding ones, both dilated basic
    blocks; ResNet-50's bottlenecks dilate their 3³ convolution (one block per stage here)."""
    weights = random_weights(medicalnet_shapes(depth, layers=layers))
    path = tmp_path / f"resnet_{depth}_23dataset.pth"
    # As MedicalNet's train.py saves a DataParallel model.
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)
    model = resnext3d.create_model(
        f"medicalnet_resnet{depth}",
        layers=layers,
        in_channels=1,
        num_classes=0,
        checkpoint_path=str(path),
    )
    volume = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = hara_forward(
            weights, volume, 2, (1, 2, 1, 1), (1, 1, 2, 4), depth == 18, head=False
        )
        actual = model.eval().forward_features(volume)
    assert actual.shape == (1, model.num_features, 2, 2, 2)  # stride 8: the last are dilated
    torch.testing.assert_close(actual, expected)


def test_kinetics_resnet_gives_its_outputs_and_is_told_by_the_model_geometry():
    weights = random_weights(kinetics_resnet_shapes(18, classes=700))
    model = resnext3d.create_model("kinetics_resnet18", num_classes=700)
    report = load_pretrained(model, weights)
    assert (report.family, report.family_from) == ("kinetics", "detected from the model's geometry")
    clip = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        expected = hara_forward(weights, clip, (1, 2, 2), (1, 2, 2, 2), (1, 1, 1, 1))
        actual = model.eval()(clip)
    torch.testing.assert_close(actual, expected)


def test_kinetics_resnext_loads_key_for_key(tmp_path):
    """Their 32-group bottleneck (planes 128…1024, expansion 2) is our 32×4d one; one block per
    stage keeps the test small, the meta-device test above checks all 101 layers' shapes."""
    weights = random_weights(kinetics_resnext_shapes(layers=(1, 1, 1, 1)))
    path = tmp_path / "resnext-101-kinetics.pth"
    wrapped = {f"module.{k}": v for k, v in weights.items() if "num_batches" not in k}
    torch.save({"epoch": 200, "arch": "resnext-101", "state_dict": wrapped}, path)  # as of 2018
    model = resnext3d.create_model(
        "kinetics_resnext101_32x4d", layers=(1, 1, 1, 1), num_classes=400
    )
    report = load_pretrained(model, path, family="kinetics")
    assert report.family_from == "given" and not report.left_at_init
    state = model.state_dict()
    for key, value in wrapped.items():
        assert torch.equal(state[key.removeprefix("module.")], value), key
    clip = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        expected = hara_forward(weights, clip, (1, 2, 2), (1, 2, 2, 2), (1, 1, 1, 1))
        actual = model.eval()(clip)
    torch.testing.assert_close(actual, expected)


# --- Input channels, heads, reports. ------------------------------------------------------------


def test_one_channel_stem_on_four_equal_channels_gives_the_source_output():
    weights = random_weights(medicalnet_shapes(10))
    model = resnext3d.create_model("medicalnet_resnet10", in_channels=4, num_classes=2)
    report = load_pretrained(model, weights)
    assert report.adapted == {"conv1.weight": "1 → 4 input channels (repeated, scaled by 1/4)"}
    assert report.left_at_init == ["fc.weight", "fc.bias"]
    assert [key for key in report.unused if not key.startswith("conv_seg.")] == []
    volume = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = hara_forward(weights, volume, 2, (1, 2, 1, 1), (1, 1, 2, 4), head=False)
        actual = model.eval().forward_features(volume.expand(-1, 4, -1, -1, -1))
    # Four quarter-weights summed round differently from one whole in float32.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_three_channel_stem_into_four_channels_repeats_and_rescales():
    weights = random_weights(r3d_18_shapes())
    model = resnext3d.create_model("r3d_18", in_channels=4, num_classes=2)
    report = load_pretrained(model, weights)
    assert report.adapted == {
        "conv1.weight": "3 → 4 input channels (repeated cyclically, scaled by 3/4)"
    }
    source, loaded = weights["stem.0.weight"], model.conv1.weight.detach()
    torch.testing.assert_close(loaded[:, :3], source * 3 / 4)
    torch.testing.assert_close(loaded[:, 3], source[:, 0] * 3 / 4)
    assert report.unused == ["fc.weight", "fc.bias"]  # 400 Kinetics classes, not 2


def test_report_is_logged_and_says_what_was_loaded_adapted_and_left(caplog):
    weights = random_weights(medicalnet_shapes(10))
    model = resnext3d.create_model("medicalnet_resnet10", in_channels=4, num_classes=2)
    with caplog.at_level(logging.INFO, logger="resnext3d.models.weights"):
        report = load_pretrained(model, weights)
    text = str(report)
    assert text in caplog.text
    total = len([k for k in model.state_dict() if not k.endswith("num_batches_tracked")])
    assert text.startswith(f"Loaded {total - 2} of the model's {total} tensors from a state dict")
    assert "family medicalnet, detected from its conv_seg.* keys" in text
    assert "left at initialisation: fc.weight, fc.bias" in text
    assert "unused from the weights: conv_seg.0.weight" in text


def test_encoder_and_unet_point_at_weights_through_the_encoder(tmp_path):
    path = tmp_path / "resnet_10_23dataset.pth"
    weights = random_weights(medicalnet_shapes(10, head=False))
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)
    encoder = resnext3d.ResNeXtFeatures(
        "medicalnet_resnet10", in_channels=4, checkpoint_path=str(path)
    )
    torch.testing.assert_close(encoder.layer4[0].conv2.weight, weights["layer4.0.conv2.weight"])
    # Stride-8 maps from the last three stages: the decoder upsamples them by 1.
    unet = resnext3d.ResNeXtUNet(encoder, out_channels=3, decoder_channels=(32, 32, 16, 16, 8))
    assert unet.eval()(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_a_config_points_the_network_at_weights(tmp_path):
    """What ``--model.init_args.network.init_args.checkpoint_path`` does in a run's config."""
    path = tmp_path / "r3d_18-b3b3357e.pth"
    weights = random_weights(r3d_18_shapes())
    torch.save(weights, path)
    parser = ArgumentParser()
    parser.add_class_arguments(resnext3d.ResNeXt, "network")
    config = parser.parse_args(
        [
            "--network.preset",
            "r3d_18",
            "--network.in_channels",
            "4",
            "--network.checkpoint_path",
            str(path),
            "--network.weights_family",
            "torchvision_video",
        ]
    )
    network = parser.instantiate(config).network
    torch.testing.assert_close(
        network.layer4[1].bn2.running_var, weights["layer4.1.conv2.1.running_var"]
    )


# --- Clear errors. -----------------------------------------------------------------------------


def test_weights_of_another_depth_name_the_key_shapes_and_the_family_presets():
    weights = random_weights(medicalnet_shapes(50, head=False))
    model = resnext3d.create_model("medicalnet_resnet10", num_classes=0)
    with pytest.raises(ValueError) as error:
        load_pretrained(model, weights)
    message = str(error.value)
    assert "layer1.0.conv1.weight: weights of shape (64, 64, 1, 1, 1)" in message
    assert "(64, 64, 3, 3, 3)" in message and "medicalnet_resnet50" in message


def test_a_planned_unet_encoder_refuses_medicalnet_weights_clearly():
    weights = random_weights(medicalnet_shapes(10, head=False))
    planned = resnext3d.PlannedResNeXtUNet(
        "resnext_unet_s", patch_size=(32, 32, 32), spacing=(1, 1, 1), in_channels=1
    )
    with pytest.raises(ValueError, match=r"conv1\.weight: weights of shape \(64, 1, 7, 7, 7\)"):
        load_pretrained(planned.encoder, weights, family="medicalnet")


def test_the_wrong_family_names_the_keys_it_cannot_place():
    weights = random_weights(r3d_18_shapes())
    model = resnext3d.create_model("r3d_18", num_classes=400)
    with pytest.raises(RuntimeError) as error:
        load_pretrained(model, weights, family="kinetics")
    message = str(error.value)
    assert "family kinetics, given" in message and "stem.0.weight" in message
    assert "torchvision_video" in message
    report = load_pretrained(model, weights, family="kinetics", strict=False)
    assert "stem.0.weight" in report.unused and "conv1.weight" in report.left_at_init
    assert (
        "layer1.0.conv1.0.weight" in report.unused and "layer1.0.conv1.weight" not in report.loaded
    )
    with pytest.raises(ValueError, match="unknown weights family 'monai'"):
        load_pretrained(model, weights, family="monai")


def test_zero_padding_shortcut_weights_into_projection_shortcuts_say_so():
    weights = random_weights(medicalnet_shapes(18, head=False))
    model = resnext3d.create_model("medicalnet_resnet18", shortcut="projection", num_classes=0)
    with pytest.raises(RuntimeError, match="shortcut='zero_pad'") as error:
        load_pretrained(model, weights)
    assert "layer2.0.downsample.0.weight" in str(error.value)


def test_another_geometry_loads_with_a_warning_when_the_family_is_named(caplog):
    """MedicalNet's weights fit a plain ResNet-10's shapes (as MONAI's ResNets load them), but
    were trained dilated: the report and a warning say so."""
    weights = random_weights(medicalnet_shapes(10, head=False))
    model = resnext3d.ResNeXt(preset="resnet18", layers=(1, 1, 1, 1), in_channels=1, num_classes=0)
    assert load_pretrained(model, weights).family == "resnext3d"  # no head, no geometry: ours
    with caplog.at_level(logging.WARNING, logger="resnext3d.models.weights"):
        report = load_pretrained(model, weights, family="medicalnet")
    assert report.geometry_differences == [
        "strides ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)) where medicalnet's weights were "
        "trained with ((1, 1, 1), (2, 2, 2), (1, 1, 1), (1, 1, 1))",
        "dilations (1, 1, 1, 1) where medicalnet's weights were trained with (1, 1, 2, 4)",
    ]
    assert "dilations (1, 1, 1, 1)" in caplog.text


def test_families_name_their_presets():
    assert FAMILIES["torchvision_video"].presets() == ["r3d_18"]
    assert FAMILIES["medicalnet"].presets() == [f"medicalnet_resnet{d}" for d in DEPTHS]
    kinetics = FAMILIES["kinetics"].presets()
    assert "kinetics_resnext101_32x4d" in kinetics and len(kinetics) == 7
    assert all(name in PRESETS for family in FAMILIES.values() for name in family.presets())
