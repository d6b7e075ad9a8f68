"""What every framework adapter of the compressor shares (LangChain ``HyCoCompressor``, LlamaIndex
``HyCoNodePostprocessor``, or yours): the budget options, their validation, and loading the core
model lazily, once, on the auto-detected device.

An adapter is a settings object (a pydantic model in both frameworks) with the attributes named
in :data:`OPTIONS` plus ``compressor`` (a prebuilt core model or ``None``), ``model_name_or_path``
and ``device``.  Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyco_rag.compression.compressor import HyCoCompressor

logger = logging.getLogger(__name__)

__all__ = ["BUDGETS", "OPTIONS", "LazyCompressor", "check_adapter_options", "compress_options", "reject_boolean"]

#: At most one of these picks the budget of a call.
BUDGETS = ("rate", "target_tokens", "threshold")
#: The keyword options an adapter forwards to ``HyCoCompressor.compress`` / ``acompress``.
OPTIONS = (*BUDGETS, "target_tokenizer", "min_tokens_per_passage", "drop_empty", "reorder", "force_tokens", "hops")


def reject_boolean(value: Any, name: str) -> Any:
    """A budget field's raw value, refused when it is a boolean.

    Pydantic's lax mode turns ``rate=True`` into ``1.0`` before any after-validator runs, so
    adapters call this from a ``mode="before"`` field validator.

    Raises:
        ValueError: ``value`` is ``True``/``False`` (or a NumPy boolean).
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ValueError(f"{name} must be a number, not a boolean ({value!r})")
    return value


def check_adapter_options(settings: Any) -> None:
    """Refuse contradictory settings at construction, naming the fields.

    Raises:
        ValueError: two budgets at once, or ``model_name_or_path`` / ``device`` given with a
            prebuilt ``compressor``.
        TypeError: a ``compressor`` without ``compress`` and ``acompress``.
    """
    budgets = [name for name in BUDGETS if getattr(settings, name, None) is not None]
    if len(budgets) > 1:
        raise ValueError(f"give at most one of rate, target_tokens and threshold; got {', '.join(budgets)}")
    compressor = getattr(settings, "compressor", None)
    if compressor is None:
        return
    if getattr(settings, "model_name_or_path", None) is not None or getattr(settings, "device", None) is not None:
        raise ValueError("compressor is already built: model_name_or_path and device cannot be given with it")
    missing = [name for name in ("compress", "acompress") if not callable(getattr(compressor, name, None))]
    if missing:
        raise TypeError(
            "compressor must be a hyco_rag.compression.HyCoCompressor (an object with compress and "
            f"acompress); {type(compressor).__name__} lacks {', '.join(missing)}"
        )


def compress_options(settings: Any) -> dict[str, Any]:
    """The keyword options of ``settings`` for the core ``compress`` / ``acompress``."""
    return {name: getattr(settings, name) for name in OPTIONS}


class LazyCompressor:
    """The core compressor of one adapter, loaded on first use and only once.

    Construction loads nothing (adapters are often built at import or config time); the first
    :meth:`get` loads ``HyCoCompressor.from_pretrained(model_name_or_path, device=device)``
    (``device=None``: a GPU when there is one), and concurrent first calls, threads or tasks,
    share that one load.  :meth:`aget` loads on a worker thread, off the event loop.
    """

    def __init__(self) -> None:
        self._core: HyCoCompressor | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._core is not None

    def get(self, model_name_or_path: str | None = None, device: str | None = None) -> HyCoCompressor:
        if self._core is None:
            with self._lock:
                if self._core is None:  # another thread may have loaded it while we waited
                    from hyco_rag.compression import HyCoCompressor

                    logger.info("loading the HyCo compressor (%s)", model_name_or_path or "shipped weights")
                    self._core = HyCoCompressor.from_pretrained(model_name_or_path, device=device)
        return self._core

    async def aget(self, model_name_or_path: str | None = None, device: str | None = None) -> HyCoCompressor:
        if self._core is not None:
            return self._core
        return await asyncio.to_thread(self.get, model_name_or_path, device)

    def core_for(self, settings: Any) -> HyCoCompressor:
        """An adapter's prebuilt ``settings.compressor``, else the model it names, loaded once."""
        if settings.compressor is not None:
            return settings.compressor
        return self.get(settings.model_name_or_path, settings.device)

    async def acore_for(self, settings: Any) -> HyCoCompressor:
        """:meth:`core_for` that loads off the event loop."""
        if settings.compressor is not None:
            return settings.compressor
        return await self.aget(settings.model_name_or_path, settings.device)
