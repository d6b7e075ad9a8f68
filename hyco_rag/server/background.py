"""Run an app with uvicorn in a background thread on a free loopback port (tests, benchmarks,
notebooks)::

    with BackgroundServer(create_app(engine)) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any


class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread.

    Args:
        app: an ASGI app (e.g. :func:`hyco_rag.server.create_app`).
        host: the address to bind (loopback by default).
        port: 0 binds a free port (see :attr:`port` once started).
        log_level: uvicorn's log level.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        import uvicorn

        self.app = app
        self.host = host
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2, access_log=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="hyco-rag-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started serving")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout_s:g} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()
