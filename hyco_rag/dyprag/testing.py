"""Test support for code that serves :class:`~hyco_rag.dyprag.runtime.ParametricRAG` (the LangChain
and LlamaIndex chat adapters, or yours).

Isolation tests (no cross-talk between concurrent requests, no delta leaking into a later call)
can only fail if a delta visibly changes the answer.  The shipped translator's deltas are small,
so :func:`strong_runtime` serves the same model with a translator whose random heads are large:
every passage moves the answer.  :func:`default_runtime` is what the adapters serve by default
(with a random translator while the package ships none).  Nothing here imports LangChain or
LlamaIndex.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hyco_rag.dyprag.runtime import ParametricRAG

__all__ = [
    "BANANA",
    "EIFFEL",
    "QUESTION",
    "TESLA",
    "default_runtime",
    "runtime_fixtures",
    "strong_runtime",
    "torch_threads",
    "weights_digest",
]

#: A question, its passage, and two unrelated passages (short: each generation takes well under a second).
QUESTION = "When was the Eiffel Tower built?"
EIFFEL = "The Eiffel Tower is a wrought-iron tower in Paris. It was built from 1887 to 1889 by Gustave Eiffel's company."
BANANA = "Bananas are elongated, edible fruits. They grow in clusters on large herbaceous plants in the tropics."
TESLA = "Nikola Tesla was born in Smiljan, in the Austrian Empire, in 1856. He later moved to the United States."


def default_runtime() -> ParametricRAG:
    """The runtime the adapters serve by default (:func:`~hyco_rag.dyprag.serving.served_runtime`).

    With the shipped translator, exactly that runtime; without one, the same served model with
    a randomly initialised translator (seed 0), so the delta modes still run.
    """
    from hyco_rag.dyprag.runtime import ParametricRAG
    from hyco_rag.dyprag.serving import served_runtime
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    served = served_runtime(None, None, None).runtime
    if served.translator is not None:
        return served
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ParametricRAG(served.generator, ParameterTranslator(TranslatorConfig.for_model(served.model)))


def strong_runtime(runtime: ParametricRAG | None = None, *, scale: float = 0.5, seed: int = 1) -> ParametricRAG:
    """``runtime``'s model (default: :func:`default_runtime`) with large random translator heads.

    The trunk is initialised with seed 0 and the heads drawn from N(0, ``scale``) with ``seed``,
    without touching the global random generator.
    """
    from hyco_rag.dyprag.runtime import ParametricRAG
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    runtime = runtime if runtime is not None else default_runtime()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        strong = ParameterTranslator(TranslatorConfig.for_model(runtime.model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind in strong.types:
            strong.head_a[kind].weight.normal_(0, scale, generator=generator)
            strong.head_b[kind].weight.normal_(0, scale, generator=generator)
    return ParametricRAG(runtime.generator, strong)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch on ``count`` threads inside the block, restoring the previous setting after.

    Decoding a 135M model gains nothing from a second thread on a shared CPU.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def runtime_fixtures() -> tuple[Any, Any, Any]:
    """Module-scoped pytest fixtures ``(_one_thread, runtime, strong_runtime)`` for an adapter suite.

    ``_one_thread`` (autouse) runs the module on one torch thread; ``runtime`` is
    :func:`default_runtime`; ``strong_runtime`` is :func:`strong_runtime` on the same model.  In
    a test module: ``_one_thread, runtime, strong_runtime = runtime_fixtures()``.
    """
    import pytest

    @pytest.fixture(autouse=True, scope="module")
    def _one_thread() -> Iterator[None]:
        with torch_threads(1):
            yield

    @pytest.fixture(scope="module", name="runtime")
    def runtime_fixture() -> ParametricRAG:
        return default_runtime()

    @pytest.fixture(scope="module", name="strong_runtime")
    def strong_runtime_fixture(runtime: ParametricRAG) -> ParametricRAG:
        return strong_runtime(runtime)

    return _one_thread, runtime_fixture, strong_runtime_fixture
