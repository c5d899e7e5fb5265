"""How a network was built, kept as data: the ``class_path`` and ``init_args`` that build it
again, in the form of a run's config and of a UNet's plan (:func:`resnext3d.models.build_network`
builds either).

A class decorated with :func:`records_init_args` remembers the arguments each instance was
built with; :func:`network_config` returns them in JSON's types, a network among them (a UNet's
encoder) as its own config, so that a folder written by
:func:`resnext3d.models.save_pretrained` rebuilds the network without the code or the run that
made it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

CONFIG_ATTRIBUTE = "_init_config"
# Set on the classes the decorator records: only they are built from a saved config.
RECORDING_MARKER = "_records_init_args"
# Arguments that load weights into the network rather than shape it: recorded as None, as the
# weights saved with the config replace them, and the file they name may be gone.
WEIGHT_ARGUMENTS = ("checkpoint_path",)


def records_init_args(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: each instance keeps the arguments of its construction (see the module).

    A subclass's own ``__init__`` calls its parent's, so the outermost decorated ``__init__``,
    the last to finish, writes the record. A subclass whose ``__init__`` is not decorated (a
    :class:`~resnext3d.models.PlannedResNeXtUNet`) is recorded as the decorated class it calls
    with the arguments it passed, which builds the same modules (the plan, as the CLI records
    it); one that inherits the decorated ``__init__`` unchanged is recorded as itself.
    """
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {}
        for name, value in list(bound.arguments.items())[1:]:  # without self
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            else:
                arguments[name] = value
        built = type(self) if type(self).__init__ is __init__ else cls
        setattr(self, CONFIG_ATTRIBUTE, (built, arguments))

    cls.__init__ = __init__
    setattr(cls, RECORDING_MARKER, True)
    return cls


def network_config(network: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that build ``network`` again, in JSON's types.

    Raises a TypeError for a network whose class does not record its arguments
    (:func:`records_init_args`), or an argument JSON cannot hold, naming it.
    """
    record = getattr(network, CONFIG_ATTRIBUTE, None)
    if record is None:
        raise TypeError(
            f"a {type(network).__name__} does not record how it was built: only networks whose "
            "class is decorated with resnext3d.models.construction.records_init_args (ResNeXt, "
            "ResNeXtFeatures, ResNeXtUNet) can be saved with their construction arguments"
        )
    cls, arguments = record
    init_args = {
        name: None if name in WEIGHT_ARGUMENTS else _as_json(value, f"{cls.__name__}.{name}")
        for name, value in arguments.items()
    }
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _as_json(value: Any, where: str) -> Any:
    if isinstance(value, nn.Module):
        return network_config(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_as_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _as_json(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a JSON config cannot hold: build the "
        "network from plain values (numbers, strings, lists, dicts) or networks"
    )


def build_recorded(config: Mapping[str, Any]) -> nn.Module:
    """The network a :func:`network_config` names, the networks among its arguments first.

    Only classes that record their construction are built, so that a config read from a shared
    folder can name no other callable (``subprocess.run`` and its arguments, say); a TypeError
    names what it refused.
    """
    class_path = config["class_path"]
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    is_network = isinstance(cls, type) and issubclass(cls, nn.Module)
    if not (is_network and getattr(cls, RECORDING_MARKER, False)):
        raise TypeError(
            f"{class_path} is not a network that records its construction (a class decorated "
            "with records_init_args), so it is not built from a saved config"
        )
    arguments = {
        key: build_recorded(value) if _names_a_network(value) else value
        for key, value in (config.get("init_args") or {}).items()
    }
    return cls(**arguments)


def _names_a_network(value: Any) -> bool:
    return isinstance(value, Mapping) and "class_path" in value
