"""OpenAI-style errors: every failure the server reports is ``{"error": {"message", "type",
"code", "param"}}`` with the HTTP status that fits, so OpenAI clients raise their usual
exception types (``openai.NotFoundError``, ``openai.RateLimitError``, ...).

=====  ==========================  =============================================================
code   ``error.type``              when
=====  ==========================  =============================================================
400    ``invalid_request_error``   a value the engine refuses (unknown mode, a mode the engine
                                   lacks the translator or hybrid adapter for, prompt too long,
                                   ``max_tokens`` over the server's limit, bad budget)
401    ``authentication_error``    the server has an API key and the request lacks it
404    ``invalid_request_error``   unknown ``model`` (code ``model_not_found``) or route
405    ``invalid_request_error``   a route called with the wrong HTTP method
413    ``invalid_request_error``   the body is larger than ``--max-body-bytes``
422    ``invalid_request_error``   the body is not JSON or does not match the schema
429    ``rate_limit_error``        the engine's waiting queue is full (``Retry-After`` is set)
503    ``server_error``            the engine is closed, the request timed out, or (Ray Serve) the
                                   replica holding it died (code ``backend_unavailable``)
=====  ==========================  =============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

#: ``error.type`` for each status the server sends.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answered as OpenAI-style JSON with ``status``.

    Args:
        status: the HTTP status code.
        message: what went wrong and, where it helps, what to do instead.
        code: a short machine-readable code (``model_not_found``, ``engine_overloaded`` ...).
        param: the request field at fault, when there is one.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "code": code if code is not None else _default_code(status),
            "param": param,
        }
    }


def _default_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One readable message (and the first offending field) from pydantic's error list."""
    parts = []
    param = None
    for error in list(errors)[:5]:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        field = ".".join(location)
        if param is None and field:
            param = field
        parts.append(f"{field}: {error.get('msg', 'invalid')}" if field else str(error.get("msg", "invalid")))
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return "invalid request body: " + "; ".join(parts), param
