"""Loaded engines and compressors, once per process and key.

A key is the *resolved* source: for a file or folder its real path, size and mtime, for a hub
id the id itself, plus the translator and the device.  Name resolution is memoised (the GGUF
content hash is computed once per file version, see :mod:`hyco_rag.models.gguf`), and loading
holds a lock of its own key only, so building many chat objects costs nothing and two models
load side by side without waiting on each other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyco_rag.dyprag.translator import ParameterTranslator
    from hyco_rag.engine.engine import Engine, EngineConfig

logger = logging.getLogger(__name__)

_ENGINES: dict[tuple[Any, ...], Engine] = {}
_COMPRESSORS: dict[tuple[Any, ...], Any] = {}
_KEY_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_LOCK = threading.Lock()


def _source_key(path_or_id: str | None) -> tuple[Any, ...]:
    """(path, size, mtime) of a local file/folder, or the name itself."""
    if path_or_id is None:
        return (None,)
    path = Path(path_or_id).expanduser()
    if path.exists():
        stat = path.stat()
        return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return (path_or_id,)


def _key_lock(key: tuple[Any, ...]) -> threading.Lock:
    with _LOCK:
        return _KEY_LOCKS.setdefault(key, threading.Lock())


@dataclass
class EngineParts:
    """What an engine serves, loaded."""

    model: Any
    tokenizer: Any
    translator: ParameterTranslator | None
    name: str
    missing_translator: str | None


def load_engine_parts(model: str | None, translator: str | None, device: str | None) -> EngineParts:
    """Load the model (default: embedded SmolLM2) and its translator (default: the shipped one).

    Without an explicit ``translator`` and none shipped for the model, the parts serve the
    context modes and delta modes fail with a message saying so.
    """
    from hyco_rag.dyprag.translator import DEFAULT_TRANSLATOR_DIR, ParameterTranslator
    from hyco_rag.models import load_causal_lm, resolve_causal_lm
    from hyco_rag.models.embedded import DEFAULT_LLM

    resolved = resolve_causal_lm(model)
    loaded_model, tokenizer = load_causal_lm(resolved, device=device)
    missing = None
    try:
        loaded = ParameterTranslator.from_pretrained(translator, model=loaded_model)
    except (FileNotFoundError, ValueError) as error:  # ValueError: made for another model, or an old format
        if translator is not None:
            raise
        loaded = None
        missing = (
            f"no usable parameter translator is shipped for this model at {DEFAULT_TRANSLATOR_DIR} ({error}); pass "
            "translator=<folder saved by ParameterTranslator.save_pretrained>, or use mode 'rag', 'hyco' or 'none'"
        )
        logger.warning("serving %s without a translator: only the context modes work", resolved)
    name = model or DEFAULT_LLM
    return EngineParts(loaded_model, tokenizer, loaded, str(name), missing)


def get_engine(
    model: str | None = None,
    translator: str | None = None,
    device: str | None = None,
    *,
    config: EngineConfig | None = None,
) -> Engine:
    """The process-wide engine for ``model`` + ``translator`` on ``device`` (loaded once).

    Aliases of one model (``"smollm2"``, the embedded default's HF id, ``None``) share one
    engine.  ``device=None`` picks CUDA when present.  ``config`` applies when the engine is
    first built.
    """
    import torch

    from hyco_rag.engine.engine import Engine
    from hyco_rag.models import default_device, resolve_causal_lm

    target = str(torch.device(device) if device is not None else default_device())
    with _LOCK:
        resolved_names = _RESOLVED.get(model)
    if resolved_names is None:
        resolved_names = resolve_causal_lm(model)
        with _LOCK:
            _RESOLVED[model] = resolved_names
    key = (_source_key(resolved_names), _source_key(translator), target)
    with _LOCK:
        engine = _ENGINES.get(key)
    if engine is not None:
        return engine
    with _key_lock(key):
        with _LOCK:
            engine = _ENGINES.get(key)
        if engine is None:
            start = time.perf_counter()
            parts = load_engine_parts(resolved_names, translator, target)
            parts.name = str(model) if model is not None else parts.name
            engine = Engine(
                parts.model,
                parts.tokenizer,
                parts.translator,
                config=config,
                name=parts.name,
                missing_translator=parts.missing_translator,
            )
            with _LOCK:
                _ENGINES[key] = engine
            logger.info("engine for %s on %s ready in %.1fs", resolved_names, target, time.perf_counter() - start)
    return engine


#: model name as given -> what it resolved to (resolution may hash a GGUF file).
_RESOLVED: dict[str | None, str] = {}


def get_compressor(path: str | os.PathLike[str] | None = None, device: str | None = None) -> Any:
    """The process-wide HyCo compressor for ``path`` (default: the shipped weights)."""
    key = (_source_key(str(path)) if path is not None else (None,), device)
    with _LOCK:
        compressor = _COMPRESSORS.get(key)
    if compressor is not None:
        return compressor
    with _key_lock(("compressor", *key)):
        with _LOCK:
            compressor = _COMPRESSORS.get(key)
        if compressor is None:
            from hyco_rag.compression import HyCoCompressor

            compressor = HyCoCompressor(path, device=device)
            with _LOCK:
                _COMPRESSORS[key] = compressor
    return compressor


def engine_count() -> int:
    """How many engines this process holds (tests check that reading metadata loads nothing)."""
    with _LOCK:
        return len(_ENGINES)


def clear_engines() -> None:
    """Close and forget every engine and compressor of the registry."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
        _COMPRESSORS.clear()
        _RESOLVED.clear()
    for engine in engines:
        engine.close()
