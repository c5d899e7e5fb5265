"""Inference outside the training stack: a run's network exported (``resnext3d export``) and run
by an engine (``resnext3d predict --engine``) in place of PyTorch's, inside the same pipeline."""

from resnext3d.deploy.engines import (
    ENGINES,
    EngineError,
    EngineRequest,
    engine_network,
    take_engine_options,
)
from resnext3d.deploy.export import EXPORT_FORMATS, export_run

__all__ = [
    "ENGINES",
    "EXPORT_FORMATS",
    "EngineError",
    "EngineRequest",
    "engine_network",
    "export_run",
    "take_engine_options",
]
