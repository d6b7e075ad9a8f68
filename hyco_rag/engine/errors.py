"""What can go wrong with a request to the engine, as types callers (and the server) map to
answers: overload is a 429, a closed engine a 503, a timeout a 503 with its own message."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of the engine's own errors."""


class EngineOverloadedError(EngineError):
    """The request queue is full; retry later (the server answers 429)."""


class EngineClosedError(EngineError):
    """The engine was closed (or its worker died); nothing more is served (the server answers 503)."""


class RequestTimeoutError(EngineError, TimeoutError):
    """The request did not finish within its timeout; its batch slot was freed."""


class RequestCancelledError(EngineError):
    """The request was cancelled (client gone, task cancelled, stream closed)."""
