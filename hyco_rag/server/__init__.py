"""The OpenAI-compatible server over the serving engine (``hyco-rag serve``; ``docs/server.md``).

Needs the ``server`` extra (FastAPI, uvicorn, prometheus-client)::

    from hyco_rag.engine import Engine
    from hyco_rag.server import create_app
    app = create_app(Engine.from_pretrained(), default_mode="combine")
"""

from hyco_rag.server.app import DEFAULT_MODEL_ALIAS, create_app
from hyco_rag.server.background import BackgroundServer
from hyco_rag.server.errors import APIError
from hyco_rag.server.metrics import ServerMetrics

__all__ = ["DEFAULT_MODEL_ALIAS", "APIError", "BackgroundServer", "ServerMetrics", "create_app"]
