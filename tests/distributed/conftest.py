"""Fixtures for the Ray tests: a local Ray on loopback, bounded to 2 CPUs, always shut down.

The whole directory skips, with the reason, when Ray is not installed (``pip install
'hyco-rag[ray]'``; ``make test`` installs it).  Each module starts its own Ray instance
(module scope) and shuts it down, Serve first, even when a test fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'hyco-rag[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'hyco-rag[ray]'")

#: CPUs the local Ray instance may schedule (this machine has 2).
RAY_CPUS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
    )
    try:
        yield
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
