"""The serving engine: one request pipeline and one model-owning worker under every path.

See :mod:`hyco_rag.engine.engine` for the data flow and :mod:`hyco_rag.engine.batch` for the
continuous batching.  Names are exported lazily, so ``hyco_rag.engine.modes`` (what the
integrations validate modes with) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> defining module
_EXPORTS = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "EngineError": "errors",
    "EngineClosedError": "errors",
    "EngineOverloadedError": "errors",
    "RequestCancelledError": "errors",
    "RequestTimeoutError": "errors",
    "MODE_NAMES": "modes",
    "Mode": "modes",
    "clear_engines": "registry",
    "get_compressor": "registry",
    "get_engine": "registry",
    "Answer": "request",
    "Completion": "request",
    "PreparedRequest": "request",
    "SamplingParams": "sampling",
    "EngineListener": "stats",
    "EngineStats": "stats",
    "StopSequenceFilter": "stops",
    "RequestHandle": "worker",
}

__all__ = [
    "Answer",
    "Completion",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "EngineListener",
    "EngineOverloadedError",
    "EngineStats",
    "MODE_NAMES",
    "Mode",
    "PreparedRequest",
    "RequestCancelledError",
    "RequestHandle",
    "RequestTimeoutError",
    "SamplingParams",
    "StopSequenceFilter",
    "clear_engines",
    "get_compressor",
    "get_engine",
]

if TYPE_CHECKING:
    from hyco_rag.engine.engine import Engine, EngineConfig
    from hyco_rag.engine.errors import (
        EngineClosedError,
        EngineError,
        EngineOverloadedError,
        RequestCancelledError,
        RequestTimeoutError,
    )
    from hyco_rag.engine.modes import MODE_NAMES, Mode
    from hyco_rag.engine.registry import clear_engines, get_compressor, get_engine
    from hyco_rag.engine.request import Answer, Completion, PreparedRequest
    from hyco_rag.engine.sampling import SamplingParams
    from hyco_rag.engine.stats import EngineListener, EngineStats
    from hyco_rag.engine.stops import StopSequenceFilter
    from hyco_rag.engine.worker import RequestHandle


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hyco_rag.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hyco_rag.engine.{module}"), name)
