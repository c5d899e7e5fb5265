"""Networks shared as folders, in the manner of timm's and Hugging Face's ``save_pretrained`` /
``from_pretrained``: ``model.safetensors`` (the state dict, tensors only, loaded without running
any code) and ``config.json`` (the ``class_path`` and ``init_args`` that build the network, see
:mod:`resnext3d.models.construction`, and its ``pretrained_cfg``). A folder rebuilds the network
without the run, the config or the preset table that made it.

``resnext3d export-weights`` writes such a folder from a run's checkpoint, the whole network or
its encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from resnext3d.files import atomic_file
from resnext3d.models.construction import build_recorded, network_config
from resnext3d.models.pretrained import PretrainedCfg, pretrained_cfg_of
from resnext3d.models.weights import adapt_input_channels

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Arguments that timm's methods change after construction (reset_classifier,
# set_grad_checkpointing): the network's current value is the one to rebuild with.
MUTABLE_ARGUMENTS = ("num_classes", "grad_checkpointing")
# A classifier's outputs, or a UNet's.
OUTPUT_ARGUMENTS = ("num_classes", "out_channels")
# The prefix of the network's tensors in a task's checkpoint (VolumeTask.network).
NETWORK_PREFIX = "network."


def save_pretrained(
    network: nn.Module, folder: str | Path, pretrained_cfg: PretrainedCfg | None = None
) -> Path:
    """Write ``network`` into ``folder`` (created if needed): its weights and the config that
    builds it again (see the module); ``pretrained_cfg`` defaults to the network's
    (:func:`~resnext3d.models.pretrained.pretrained_cfg_of`). Returns the folder.

    Raises a TypeError for a network that does not record its construction, and a ValueError
    for one changed since in a way the record does not hold (the rebuilt network's tensors
    would not fit)."""
    folder = Path(folder)
    config = construction_of(network)
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()
    }
    cfg = pretrained_cfg if pretrained_cfg is not None else pretrained_cfg_of(network)
    config["pretrained_cfg"] = cfg.to_dict() if cfg is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / WEIGHTS_FILE) as file:
        file.write(safetensors.torch.save(state, metadata={"format": "pt"}))
    with atomic_file(folder / CONFIG_FILE, "w") as file:
        json.dump(config, file, indent=2)
        file.write("\n")
    return folder


def from_pretrained(
    folder: str | Path, num_classes: int | None = None, in_channels: int | None = None
) -> nn.Module:
    """The network saved in ``folder`` by :func:`save_pretrained`, its weights loaded strictly.

    For fine-tuning on other data, ``num_classes`` (a UNet's ``out_channels``) rebuilds the
    classifier or head, left at its initialisation, and ``in_channels`` the first convolution,
    its kernel adapted (:func:`~resnext3d.models.weights.adapt_input_channels`). Every other
    tensor must fit. (A run's config gives the folder as its network's ``checkpoint_path``.)

    Args:
        folder: a folder with ``model.safetensors`` and ``config.json``.
        num_classes: outputs of the classifier or head; None keeps the saved network's.
        in_channels: input channels; None keeps the saved network's.
    """
    folder_path = Path(folder)
    if not folder_path.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder of pretrained weights (save_pretrained or resnext3d "
            f"export-weights write one, with {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    config_path = folder_path / CONFIG_FILE
    config = read_config(config_path)
    cfg = _read_pretrained_cfg(config, config_path)
    arguments = _network_arguments(config, config_path)
    saved_inputs = cfg.input_size[0] if cfg else _argument(arguments, ("in_channels",))
    saved_outputs = cfg.num_classes if cfg else _argument(arguments, OUTPUT_ARGUMENTS)
    changed_inputs = in_channels is not None and in_channels != saved_inputs
    changed_outputs = num_classes is not None and num_classes != saved_outputs
    if changed_inputs:
        _set_argument(arguments, ("in_channels",), in_channels, config_path)
    if changed_outputs:
        _set_argument(arguments, OUTPUT_ARGUMENTS, num_classes, config_path)
    try:
        network = build_recorded(config)
    except (ImportError, TypeError, ValueError) as error:
        raise ValueError(
            f"{config_path}: cannot build its network {config['class_path']} ({error})"
        ) from error
    weights_path = folder_path / WEIGHTS_FILE
    state = read_weights(weights_path)
    left_out: list[str] = []
    if changed_outputs:
        classifier = _cfg_name(cfg, "classifier", config_path)
        left_out = [name for name in state if name.startswith(f"{classifier}.")]
        state = {name: tensor for name, tensor in state.items() if name not in left_out}
    if changed_inputs:
        stem = f"{_cfg_name(cfg, 'first_conv', config_path)}.weight"
        state[stem] = adapt_input_channels(state[stem], in_channels)
    load_strictly(network, state, weights_path, allowed_missing=left_out)
    if cfg is not None:  # what the weights were trained on, but the channels given anew
        network.pretrained_cfg = dataclasses.replace(
            cfg,
            input_size=(in_channels, *cfg.input_size[1:]) if changed_inputs else cfg.input_size,
            modalities=None if changed_inputs else cfg.modalities,
            num_classes=num_classes if changed_outputs else cfg.num_classes,
            label_names=None if changed_outputs else cfg.label_names,
        )
    return network


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a weights folder, checked to name a network."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing: a weights folder holds {CONFIG_FILE} (the network's class_path "
            f"and init_args) beside {WEIGHTS_FILE}"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON config ({error})") from error
    if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
        raise ValueError(f"{path}: names no network (it needs a class_path and init_args)")
    return config


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a weights folder's ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error


def load_strictly(
    network: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | Path,
    allowed_missing: list[str] = (),
) -> None:
    """Load ``state`` into ``network``, every tensor matching in name and shape (but
    ``allowed_missing``), or a ValueError naming ``source`` and the first that differ."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state) - set(allowed_missing))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(
        f"{name} {tuple(state[name].shape)} where the network has {tuple(expected[name].shape)}"
        for name in set(state) & set(expected)
        if state[name].shape != expected[name].shape
    )
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{source}: the weights do not fit the network ({len(reshaped)} differ in shape, "
            f"{len(missing)} missing, {len(unexpected)} unexpected; e.g. "
            f"{'; '.join([*reshaped, *missing, *unexpected][:3])})"
        )
    network.load_state_dict(state, strict=not allowed_missing)


def export_weights(checkpoint_path: str | Path, folder: str | Path, part: str = "network") -> Path:
    """A weights folder from a task's checkpoint: the whole network (``part="network"``) or its
    encoder (``"encoder"``: a UNet's, or a classifier without its classifier, a
    :class:`~resnext3d.models.ResNeXtFeatures`), with the pretrained_cfg the run recorded."""
    from resnext3d.training.checkpoints import CheckpointError, read_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)
    config = checkpoint.get("network_config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{checkpoint_path}: records no network_config (written before checkpoints did, or "
            "its network does not record its construction): rebuild the network from the run's "
            "config and use save_pretrained"
        )
    state = {
        name.removeprefix(NETWORK_PREFIX): tensor
        for name, tensor in checkpoint["state_dict"].items()
        if name.startswith(NETWORK_PREFIX)
    }
    network = build_recorded(config)
    load_strictly(network, state, checkpoint_path)
    saved_cfg = checkpoint.get("pretrained_cfg")
    cfg = PretrainedCfg.from_dict(saved_cfg, str(checkpoint_path)) if saved_cfg else None
    if cfg is not None:
        cfg.source = str(Path(checkpoint_path).resolve())
    if part == "encoder":
        network, cfg = _encoder(network, config, cfg)
    elif part != "network":
        raise ValueError(f"part must be 'network' or 'encoder', got {part!r}")
    return save_pretrained(network, folder, cfg)


def _encoder(
    network: nn.Module, config: dict[str, Any], cfg: PretrainedCfg | None
) -> tuple[nn.Module, PretrainedCfg | None]:
    """A network's encoder and its pretrained_cfg: a UNet's ``encoder``; a ResNeXt classifier's
    stem and stages, as the :class:`~resnext3d.models.ResNeXtFeatures` of its arguments."""
    from resnext3d.models.resnext import ResNeXt, ResNeXtFeatures

    if isinstance(getattr(network, "encoder", None), nn.Module):
        encoder = network.encoder
    elif type(network) is ResNeXt:
        arguments = {
            name: value
            for name, value in config["init_args"].items()
            if name not in ("num_classes", "drop_rate")
        }
        encoder = ResNeXtFeatures(**arguments)
        state = {
            name: tensor
            for name, tensor in network.state_dict().items()
            if not name.startswith("fc.")
        }
        load_strictly(encoder, state, "the classifier's stem and stages")
    else:
        raise ValueError(f"a {type(network).__name__} has no encoder to export")
    if cfg is None:
        return encoder, None
    first_conv = cfg.first_conv.removeprefix("encoder.") if cfg.first_conv else None
    return encoder, dataclasses.replace(
        cfg,
        input_multiple=None,
        num_classes=0,
        label_names=None,
        first_conv=first_conv,
        classifier=None,
    )


def export_weights_main(argv: list[str] | None = None) -> int:
    """``resnext3d export-weights``: see :func:`export_weights`."""
    from resnext3d.training.checkpoints import CheckpointError, best_checkpoint

    parser = argparse.ArgumentParser(
        prog="resnext3d export-weights",
        description="Write a trained network, or its encoder, as a folder of model.safetensors "
        "and config.json, which resnext3d.from_pretrained (or a network's checkpoint_path) "
        "loads without the run.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a run directory: its best checkpoint (else its last)")
    source.add_argument("--checkpoint", help="a checkpoint of a run")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument(
        "--part",
        choices=("network", "encoder"),
        default="network",
        help="the whole network, or its encoder (a UNet's; a classifier's stem and stages)",
    )
    args = parser.parse_args(argv)
    try:
        checkpoint = best_checkpoint(args.run) if args.run else Path(args.checkpoint)
        folder = export_weights(checkpoint, args.out, args.part)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"resnext3d export-weights: error: {error}", file=sys.stderr)
        return 1
    print(f"{folder}: the {args.part} of {checkpoint}")
    return 0


def construction_of(network: nn.Module, verify: bool = True) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that build ``network`` as it is now: its recorded
    construction (:func:`~resnext3d.models.construction.network_config`, a TypeError if it has
    none) with the arguments timm's methods change since (:data:`MUTABLE_ARGUMENTS`).

    ``verify`` builds it without memory (meta device) and raises a ValueError if its tensors
    would differ; that costs seconds the first time in a process (PyTorch's meta kernels for
    the initialisations), so a run's checkpoints leave it to the export, which loads strictly.
    """
    config = network_config(network)
    for name in MUTABLE_ARGUMENTS:
        if name in config["init_args"] and hasattr(network, name):
            config["init_args"][name] = getattr(network, name)
    if not verify:
        return config
    with torch.device("meta"):
        rebuilt = build_recorded(config)
    expected = {name: tensor.shape for name, tensor in rebuilt.state_dict().items()}
    actual = {name: tensor.shape for name, tensor in network.state_dict().items()}
    differing = sorted(
        set(expected) ^ set(actual)
        | {name for name in set(expected) & set(actual) if expected[name] != actual[name]}
    )
    if differing:
        raise ValueError(
            f"a {type(network).__name__}'s tensors differ from those of the "
            f"{config['class_path']} its construction arguments build ({len(differing)}, e.g. "
            f"{differing[:3]}): was it changed after it was built, or is it a subclass whose "
            "__init__ is not decorated with records_init_args?"
        )
    return config


def _network_arguments(config: dict[str, Any], path: Path) -> dict[str, Any]:
    arguments = config.setdefault("init_args", {})
    if not isinstance(arguments, dict):
        raise ValueError(f"{path}: init_args must be a mapping, got {arguments!r}")
    return arguments


def _argument(arguments: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` the arguments have, or their encoder's."""
    for name in names:
        if name in arguments:
            return arguments[name]
    encoder = arguments.get("encoder")
    if isinstance(encoder, dict) and isinstance(encoder.get("init_args"), dict):
        return _argument(encoder["init_args"], names)
    return None


def _set_argument(
    arguments: dict[str, Any], names: tuple[str, ...], value: int, path: Path
) -> None:
    """Set the first of ``names`` the arguments have, else their encoder's; an input channel
    count the arguments leave at its default is added."""
    for name in names:
        if name in arguments:
            arguments[name] = value
            return
    encoder = arguments.get("encoder")
    if isinstance(encoder, dict) and isinstance(encoder.get("init_args"), dict):
        _set_argument(encoder["init_args"], names, value, path)
    elif names == ("in_channels",):
        arguments["in_channels"] = value
    else:
        raise ValueError(f"{path}: its network takes none of {', '.join(names)}: it has no head")


def _read_pretrained_cfg(config: dict[str, Any], path: Path) -> PretrainedCfg | None:
    values = config.get("pretrained_cfg")
    return PretrainedCfg.from_dict(values, str(path)) if values else None


def _cfg_name(cfg: PretrainedCfg | None, field: str, path: Path) -> str:
    name = getattr(cfg, field, None) if cfg is not None else None
    if not name:
        raise ValueError(
            f"{path}: its pretrained_cfg names no {field}, so it cannot be adapted to other data"
        )
    return name
