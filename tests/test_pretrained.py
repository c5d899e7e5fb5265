"""Weights shared as folders (save_pretrained / from_pretrained, export-weights), the
pretrained_cfg networks and checkpoints carry, and layer-wise learning-rate decay."""

import json
import logging
import shutil
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from toy_data import ToyVolumes

import resnext3d
from resnext3d.cli import main
from resnext3d.data import MODALITIES
from resnext3d.models import (
    GradingResNeXtUNet,
    PlannedGradingResNeXtUNet,
    PlannedResNeXtUNet,
    PretrainedCfg,
    ResNeXtUNet,
    export_weights,
    from_pretrained,
    save_pretrained,
)
from resnext3d.models.construction import network_config, records_init_args
from resnext3d.models.hub import CONFIG_FILE, WEIGHTS_FILE
from resnext3d.models.pretrained import (
    BRATS_MODALITIES,
    default_pretrained_cfg,
    pretrained_cfg_for_data,
    pretrained_cfg_of,
)
from resnext3d.tasks import VolumeClassifier, VolumeSegmenter
from resnext3d.training import WarmupCosineLR
from resnext3d.training.checkpoints import ModelCheckpoint, read_checkpoint
from resnext3d.training.layer_decay import layer_decay_groups, layer_ids

TINY = "resnext14_tiny"


def tiny_classifier(**kwargs) -> resnext3d.ResNeXt:
    return resnext3d.create_model(TINY, in_channels=4, num_classes=2, **kwargs)


def tiny_unet() -> ResNeXtUNet:
    return PlannedResNeXtUNet(
        "resnext_unet_s", (16, 16, 16), (3.0, 3.0, 3.0), layers=(1, 1, 1, 1, 1)
    )


def trained_like(network: torch.nn.Module) -> torch.nn.Module:
    """Every tensor, batch-norm statistics included, away from its initialisation, so that a
    rebuilt network equals it only if the weights were loaded."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(3)
    return network.eval()


def assert_same_network(saved: torch.nn.Module, loaded: torch.nn.Module, size: int = 16) -> None:
    """Every tensor equal (name, dtype, values) and the outputs equal."""
    saved_state, loaded_state = saved.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(saved_state)
    for name, tensor in saved_state.items():
        assert loaded_state[name].dtype == tensor.dtype, name
        assert torch.equal(loaded_state[name], tensor), name
    x = torch.randn(2, 4, size, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = saved.eval()(x), loaded.eval()(x)
    assert len(as_list(got)) == len(as_list(expected))
    assert all(torch.equal(a, b) for a, b in zip(as_list(got), as_list(expected), strict=True))


def as_list(output: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [output] if torch.is_tensor(output) else output


@pytest.mark.parametrize(
    ("build", "rebuilt_class"),
    [
        (tiny_classifier, resnext3d.ResNeXt),
        (
            lambda: resnext3d.create_model(
                TINY, in_channels=4, features_only=True, out_indices=(1, 3)
            ),
            resnext3d.ResNeXtFeatures,
        ),
        # A planned UNet is saved as its plan: the plain ResNeXtUNet it built.
        (tiny_unet, ResNeXtUNet),
        # The multi-task network: its regions and its grade both come back.
        (
            lambda: PlannedGradingResNeXtUNet(
                preset="resnext_unet_s",
                patch_size=(16, 16, 16),
                spacing=(3.0, 3.0, 3.0),
                layers=(1, 1, 1, 1, 1),
            ),
            GradingResNeXtUNet,
        ),
    ],
    ids=["ResNeXt", "ResNeXtFeatures", "planned-ResNeXtUNet", "planned-GradingResNeXtUNet"],
)
def test_from_pretrained_rebuilds_the_network_bit_for_bit(build, rebuilt_class, tmp_path):
    network = trained_like(build())
    save_pretrained(network, tmp_path / "weights")
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = from_pretrained(str(tmp_path / "weights"))
    assert type(loaded) is rebuilt_class
    assert_same_network(network, loaded)


def test_the_config_holds_the_construction_arguments_and_the_pretrained_cfg(tmp_path):
    network = tiny_classifier(cardinality=4, drop_path_rate=0.1)
    save_pretrained(network, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["class_path"] == "resnext3d.models.resnext.ResNeXt"
    assert config["init_args"]["preset"] == TINY
    assert config["init_args"]["cardinality"] == 4
    assert config["init_args"]["drop_path_rate"] == 0.1
    assert PretrainedCfg.from_dict(config["pretrained_cfg"]) == network.pretrained_cfg
    assert from_pretrained(str(tmp_path)).pretrained_cfg == network.pretrained_cfg


def test_a_resnext_carries_its_default_pretrained_cfg():
    cfg = tiny_classifier().pretrained_cfg
    assert cfg.architecture == TINY
    assert cfg.input_size == (4, 64, 64, 64) and cfg.spacing == (2.0, 2.0, 2.0)
    assert cfg.modalities == tuple(MODALITIES) == BRATS_MODALITIES
    assert cfg.normalization == "zscore_nonzero" and cfg.mean is None
    assert (cfg.first_conv, cfg.classifier, cfg.num_classes) == ("conv1", "fc", 2)
    encoder = resnext3d.create_model(TINY, in_channels=1, features_only=True, stem_type="deep")
    assert (encoder.pretrained_cfg.first_conv, encoder.pretrained_cfg.classifier) == (
        "conv1.0",
        None,
    )
    assert encoder.pretrained_cfg.modalities is None  # 1 channel: not the BraTS modalities
    image_model = resnext3d.create_model(TINY, spatial_dims=2, in_channels=3, num_classes=10)
    assert image_model.pretrained_cfg.input_size == (3, 224, 224)
    assert image_model.pretrained_cfg.mean == (0.485, 0.456, 0.406)


def test_a_classifier_reset_after_construction_is_saved_as_it_is(tmp_path):
    network = tiny_classifier()
    network.reset_classifier(5)
    save_pretrained(trained_like(network), tmp_path)
    assert_same_network(network, from_pretrained(str(tmp_path)))


def test_a_network_changed_beyond_its_arguments_is_refused_when_saved(tmp_path):
    network = tiny_classifier()
    network.layer4 = torch.nn.Identity()
    with pytest.raises(ValueError, match="changed after it was built"):
        save_pretrained(network, tmp_path)
    with pytest.raises(TypeError, match="does not record how it was built"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)


def test_from_pretrained_adapts_the_head_and_the_first_conv_for_fine_tuning(tmp_path):
    network = trained_like(tiny_classifier())
    save_pretrained(network, tmp_path)
    tuned = from_pretrained(str(tmp_path), num_classes=3, in_channels=1)
    assert tuned.fc.out_features == 3 and tuned.conv1.in_channels == 1
    assert tuned.pretrained_cfg.input_size == (1, 64, 64, 64)
    assert tuned.pretrained_cfg.modalities is None and tuned.pretrained_cfg.num_classes == 3
    assert torch.equal(tuned.conv1.weight, network.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(tuned.layer4[0].conv2.weight, network.layer4[0].conv2.weight)
    # The same through a network's checkpoint_path, as a run's config gives it (read_state_dict
    # reads folders).
    created = resnext3d.ResNeXt(TINY, in_channels=4, num_classes=3, checkpoint_path=str(tmp_path))
    assert torch.equal(created.layer1[0].conv1.weight, network.layer1[0].conv1.weight)
    created = resnext3d.create_model(
        TINY, in_channels=4, num_classes=2, checkpoint_path=tmp_path / WEIGHTS_FILE
    )
    assert torch.equal(created.fc.weight, network.fc.weight)


def test_missing_and_corrupt_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none'}: no such folder"):
        from_pretrained(str(tmp_path / "none"))
    folder = save_pretrained(tiny_classifier(), tmp_path / "weights")
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        from_pretrained(str(folder))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=f"{weights}: no such weights file"):
        from_pretrained(str(folder))
    config.write_text("{ truncated")
    with pytest.raises(ValueError, match=f"{config}: not a readable JSON config"):
        from_pretrained(str(folder))
    config.unlink()
    with pytest.raises(FileNotFoundError, match=f"{config}: missing"):
        from_pretrained(str(folder))


def test_a_config_builds_only_networks_that_record_their_construction(tmp_path):
    folder = save_pretrained(tiny_classifier(), tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(class_path="subprocess.run", init_args={"args": ["touch", str(tmp_path / "ran")]})
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="subprocess.run is not a network that records"):
        from_pretrained(folder)
    assert not (tmp_path / "ran").exists()


def test_weights_of_another_network_are_named_with_what_differs(tmp_path):
    save_pretrained(tiny_classifier(), tmp_path / "tiny")
    save_pretrained(tiny_classifier(cardinality=4), tmp_path / "other")
    (tmp_path / "tiny" / WEIGHTS_FILE).replace(tmp_path / "other" / WEIGHTS_FILE)
    with pytest.raises(
        ValueError, match=r"model.safetensors: the weights do not fit .* differ in shape"
    ):
        from_pretrained(str(tmp_path / "other"))


@pytest.mark.parametrize("coarse", [False, True])
def test_group_matcher_takes_every_parameter_but_the_classifier_exactly_once(coarse):
    import re

    network = tiny_classifier(stem_type="deep")
    patterns = [re.compile(p) for p in network.group_matcher(coarse=coarse).values()]
    for name, _ in network.named_parameters():
        matches = sum(bool(pattern.match(name)) for pattern in patterns)
        assert matches == (0 if name.startswith("fc.") else 1), name
    layers = layer_ids(dict(network.named_parameters()), network.group_matcher(coarse=coarse))
    # The stem, 4 stages of one block, and the classifier last.
    assert sorted(set(layers.values())) == list(range(6))
    assert layers["conv1.0.weight"] == 0 and layers["fc.weight"] == 5
    assert layers["layer2.0.conv1.weight"] == 2


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.1, momentum=0.9)


def test_layer_decay_scales_each_layer_s_rate_and_the_schedule_keeps_the_ratios():
    task = VolumeClassifier(
        tiny_classifier(),
        optimizer=sgd,
        scheduler=partial(WarmupCosineLR, warmup_steps=2),
        layer_decay=0.5,
    )
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    groups = optimizer.param_groups
    names = [name for group in groups for name in group["param_names"]]
    assert sorted(names) == sorted(name for name, _ in task.named_parameters())  # each once
    assert groups[0]["param_names"][0] == "network.conv1.weight"
    assert groups[-1]["param_names"] == ["network.fc.weight", "network.fc.bias"]
    expected = [0.1 * 0.5 ** (5 - layer) for layer in range(6)]
    initial = [group["initial_lr"] for group in groups]  # the schedule's base rates
    assert initial == pytest.approx(expected)
    scheduler.fit_to_run(10)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        rates = [group["lr"] for group in groups]
        assert [rate / rates[-1] for rate in rates] == pytest.approx(
            [e / expected[-1] for e in expected]
        )
    assert rates[-1] < 0.1  # the schedule did move the rates


def test_without_layer_decay_one_group_has_the_optimizer_s_rate():
    task = VolumeClassifier(tiny_classifier(), optimizer=sgd)
    (group,) = task.configure_optimizers().param_groups
    assert group["lr"] == 0.1 and len(group["params"]) == len(list(task.parameters()))


def test_a_unet_s_encoder_decays_and_its_decoder_and_head_learn_at_the_full_rate():
    task = VolumeSegmenter(tiny_unet(), optimizer=sgd, layer_decay=0.8)
    groups = task.configure_optimizers().param_groups
    *encoder_groups, last = groups
    assert all(n.startswith("network.encoder.") for g in encoder_groups for n in g["param_names"])
    assert not any(n.startswith("network.encoder.") for n in last["param_names"])
    assert {"network.head.weight", "network.stages.0.convs.0.conv.weight"} <= set(
        last["param_names"]
    )
    assert last["lr"] == pytest.approx(0.1)
    assert groups[0]["lr"] == pytest.approx(0.1 * 0.8 ** (len(groups) - 1))
    assert groups[0]["param_names"][0] == "network.encoder.conv1.weight"


def test_layer_decay_needs_a_network_that_numbers_its_layers():
    task = VolumeSegmenter(torch.nn.Conv3d(4, 3, 1), optimizer=sgd, layer_decay=0.7)
    with pytest.raises(ValueError, match="layer_decay needs a network with a group_matcher"):
        task.configure_optimizers()
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        layer_decay_groups(VolumeClassifier(tiny_classifier(), optimizer=sgd), 1.5)


def tool(args: list[str]) -> int:
    """The exit status of a ``resnext3d`` tool."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


class GriddedToyVolumes(ToyVolumes):
    """ToyVolumes with what the BraTS data modules say of their grid."""

    roi_size = (16, 16, 16)
    spacing = (3.0, 3.0, 3.0)


def test_a_run_s_checkpoint_says_what_its_input_must_be_and_exports_as_a_folder(tmp_path):
    task = VolumeClassifier(tiny_classifier(), optimizer=sgd, channels_last=False)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(task, datamodule=GriddedToyVolumes())
    checkpoint_path = tmp_path / "last.ckpt"
    checkpoint = read_checkpoint(checkpoint_path)
    cfg = PretrainedCfg.from_dict(checkpoint["pretrained_cfg"])
    assert cfg.input_size == (4, 16, 16, 16) and cfg.spacing == (3.0, 3.0, 3.0)
    assert cfg.label_names == ("LGG", "HGG") and cfg.num_classes == 2
    assert cfg.modalities == BRATS_MODALITIES and cfg.architecture == TINY
    assert checkpoint["network_config"]["init_args"]["preset"] == TINY

    assert (
        tool(
            ["export-weights", "--checkpoint", str(checkpoint_path), "--out", str(tmp_path / "net")]
        )
        == 0
    )
    network = from_pretrained(str(tmp_path / "net"))
    assert network.pretrained_cfg.source == str(checkpoint_path.resolve())
    assert network.pretrained_cfg.input_size == (4, 16, 16, 16)
    assert_same_network(task.network.cpu(), network)

    encoder = from_pretrained(str(export_weights(checkpoint_path, tmp_path / "encoder", "encoder")))
    assert type(encoder) is resnext3d.ResNeXtFeatures
    assert encoder.pretrained_cfg.classifier is None and encoder.pretrained_cfg.num_classes == 0
    assert torch.equal(encoder.layer4[0].conv3.weight, network.layer4[0].conv3.weight)


def test_export_weights_names_a_checkpoint_it_cannot_read(tmp_path, capsys):
    assert tool(["export-weights", "--run", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path}: not a run directory" in capsys.readouterr().err


def test_the_presets_of_published_weights_say_the_input_those_were_trained_on():
    def network(in_channels: int) -> SimpleNamespace:
        return SimpleNamespace(
            in_channels=in_channels, num_classes=0, spatial_dims=3, first_conv="conv1"
        )

    kinetics = default_pretrained_cfg(network(3), "kinetics_resnet50")
    assert kinetics.family == "kinetics" and kinetics.input_size == (3, 16, 112, 112)
    assert kinetics.normalization == "mean_std" and kinetics.mean == (0.4345, 0.4051, 0.3775)
    medicalnet = default_pretrained_cfg(network(1), "medicalnet_resnet10")
    assert medicalnet.input_size == (1, 56, 448, 448) and medicalnet.spacing is None
    # Adapted to the BraTS channels: the family's per-channel statistics no longer apply.
    r3d = default_pretrained_cfg(network(4), "r3d_18")
    assert r3d.input_size == (4, 16, 112, 112) and r3d.mean is None and r3d.modalities is None


@records_init_args
class LoadsWeights(torch.nn.Module):
    def __init__(self, width: int = 2, checkpoint_path: str | None = None) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)


class InheritsItsConstruction(LoadsWeights):
    pass


def test_construction_records_leave_out_the_weights_a_network_loaded():
    config = network_config(InheritsItsConstruction(3, checkpoint_path="gone.pt"))
    assert config["class_path"].endswith("test_pretrained.InheritsItsConstruction")
    assert config["init_args"] == {"width": 3, "checkpoint_path": None}


def test_a_segmentation_run_s_encoder_exports_as_a_features_network(tmp_path):
    unet = trained_like(tiny_unet())
    cfg = pretrained_cfg_of(unet)
    assert (cfg.first_conv, cfg.classifier) == ("encoder.conv1", "head")
    assert cfg.input_multiple == (4, 4, 4)  # the planned strides of a 16³ patch
    checkpoint = tmp_path / "last.ckpt"  # what VolumeSegmenter's checkpoints hold of it
    torch.save(
        {
            "state_dict": {f"network.{k}": v for k, v in unet.state_dict().items()},
            "network_config": network_config(unet),
            "pretrained_cfg": cfg.to_dict(),
        },
        checkpoint,
    )
    encoder = from_pretrained(export_weights(checkpoint, tmp_path / "encoder", part="encoder"))
    assert type(encoder) is resnext3d.ResNeXtFeatures
    assert (encoder.pretrained_cfg.first_conv, encoder.pretrained_cfg.classifier) == ("conv1", None)
    assert_same_network(unet.encoder, encoder)


def test_a_network_that_says_nothing_of_itself_is_described_by_its_data():
    assert pretrained_cfg_of(torch.nn.Conv3d(4, 3, 1)) is None
    data = SimpleNamespace(in_channels=2, roi_size=(32, 32, 24), spacing=(1, 1, 2), num_classes=3)
    cfg = pretrained_cfg_for_data(None, data)
    assert (cfg.first_conv, cfg.classifier, cfg.architecture) == (None, None, None)
    assert cfg.input_size == (2, 32, 32, 24) and cfg.spacing == (1.0, 1.0, 2.0)
    assert cfg.modalities is None and cfg.num_classes == 3  # 2 channels are not BraTS's 4


def test_a_run_fine_tuned_from_a_folder_is_evaluated_after_the_folder_is_gone(toy_config, caplog):
    """The CLI reports what the weights gave, and evaluating or resuming the run takes its own
    checkpoint's weights without reading the pretrained file again."""
    source = trained_like(tiny_classifier())
    save_pretrained(source, "pretrained")
    network = "--model.init_args.network.init_args.checkpoint_path=pretrained"
    with caplog.at_level(logging.INFO, logger="resnext3d.models.weights"):
        main(["fit", "--config", str(toy_config), network, "--trainer.max_epochs", "1"])
    assert "Loaded" in caplog.text and "pretrained" in caplog.text
    shutil.rmtree("pretrained")
    (run,) = Path("runs/toy").iterdir()
    main(["validate", "--run", str(run)])
    main(["fit", "--resume", str(run), "--trainer.max_epochs", "2"])
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
