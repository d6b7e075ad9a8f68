"""The serving engine: one request pipeline and one model-owning worker under every path.

See :mod:`hyco_rag.engine.engine` for the data flow and :mod:`hyco_rag.engine.batch` for the
continuous batching.  :mod:`hyco_rag.engine.modes` is importable without torch.
"""

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

__all__ = [
    "MODE_NAMES",
    "Answer",
    "Completion",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "EngineListener",
    "EngineOverloadedError",
    "EngineStats",
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
