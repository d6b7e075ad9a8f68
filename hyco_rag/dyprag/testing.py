"""Test support for code that serves DyPRAG through :class:`hyco_rag.engine.Engine` (the LangChain
and LlamaIndex chat adapters, or yours).

Isolation tests (no cross-talk between concurrent requests, no delta leaking into a later call)
can only fail if a delta visibly changes the answer.  Trained translators' deltas are small, so
:func:`strong_translator` builds one whose random heads are large: every passage moves the
answer.  :func:`strong_translator_dir` saves one for the embedded SmolLM2 (once per process) and
:func:`served_engine` is the registry's engine of SmolLM2 with it, so the suites never depend on
the shipped translator and every ``ChatHyCo``/``HyCoLLM`` built by name with
``translator=strong_translator_dir()`` shares that one engine.  Nothing here imports LangChain
or LlamaIndex.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hyco_rag.dyprag.translator import ParameterTranslator
    from hyco_rag.engine import Engine
    from hyco_rag.hybrid import HybridAdapter

__all__ = [
    "BANANA",
    "EIFFEL",
    "QUESTION",
    "SOFT_TOKENS",
    "TESLA",
    "engine_fixtures",
    "give_random_hybrid",
    "random_hybrid_adapter",
    "served_engine",
    "strong_translator",
    "strong_translator_dir",
    "torch_threads",
    "weights_digest",
]

#: A question, its passage, and two unrelated passages (short: each generation takes well under a second).
QUESTION = "When was the Eiffel Tower built?"
EIFFEL = "The Eiffel Tower is a wrought-iron tower in Paris. It was built from 1887 to 1889 by Gustave Eiffel's company."
BANANA = "Bananas are elongated, edible fruits. They grow in clusters on large herbaceous plants in the tropics."
TESLA = "Nikola Tesla was born in Smiljan, in the Austrian Empire, in 1856. He later moved to the United States."

#: Soft tokens per request of :func:`random_hybrid_adapter`.
SOFT_TOKENS = 4


def strong_translator(model: torch.nn.Module, *, scale: float = 0.5, seed: int = 1) -> ParameterTranslator:
    """A translator for ``model`` with large random heads (every passage visibly moves the answer).

    The trunk is initialised with seed 0 and the heads drawn from N(0, ``scale``) with ``seed``,
    without touching the global random generator.
    """
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        strong = ParameterTranslator(TranslatorConfig.for_model(model))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind in strong.types:
            strong.head_a[kind].weight.normal_(0, scale, generator=generator)
            strong.head_b[kind].weight.normal_(0, scale, generator=generator)
    return strong


@functools.cache
def strong_translator_dir() -> str:
    """A folder holding :func:`strong_translator` of the embedded SmolLM2 (built once per process,
    removed at exit): pass it as ``translator=`` to serve SmolLM2 with strong deltas."""
    from hyco_rag.models import load_causal_lm

    model, _ = load_causal_lm(None, device="cpu")  # the translator records the model's fingerprint
    directory = tempfile.mkdtemp(prefix="hyco-strong-translator-")
    atexit.register(shutil.rmtree, directory, True)
    strong_translator(model).save_pretrained(directory)
    del model
    return directory


def served_engine() -> Engine:
    """The registry's engine (:func:`hyco_rag.engine.get_engine`) of the embedded SmolLM2 with
    :func:`strong_translator_dir`: loaded once per process, shared by every client built by name."""
    from hyco_rag.engine import get_engine

    return get_engine(None, strong_translator_dir())


def random_hybrid_adapter(model: torch.nn.Module, *, num_soft_tokens: int = SOFT_TOKENS, seed: int = 0) -> HybridAdapter:
    """A small random hybrid adapter sized for ``model`` (seeded, without touching the global
    random generator): the ``hybrid`` modes run with it, their answers are just not trained."""
    from hyco_rag.hybrid import HybridAdapter

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        adapter = HybridAdapter.for_model(model, width=32, heads=4, num_soft_tokens=num_soft_tokens)  # type: ignore[arg-type]
    return adapter.eval()


def give_random_hybrid(engine: Engine, *, num_soft_tokens: int = SOFT_TOKENS, seed: int = 0) -> Engine:
    """``engine`` serving the ``hybrid`` modes with :func:`random_hybrid_adapter` (unless it was
    built with ``hybrid=`` or already loaded an adapter).

    For an engine built elsewhere, such as the registry's (:func:`hyco_rag.engine.get_engine`
    has no ``hybrid=``; this sets ``engine.hybrid``).
    """
    if not engine.has_hybrid:
        engine.hybrid = random_hybrid_adapter(engine.model, num_soft_tokens=num_soft_tokens, seed=seed)
    return engine


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


def engine_fixtures() -> tuple[Any, Any]:
    """Pytest fixtures ``(_one_thread, engine)`` for an adapter suite.

    ``_one_thread`` (autouse, module scope) runs the module on one torch thread; ``engine`` is
    :func:`served_engine` with a random hybrid adapter (:func:`give_random_hybrid`, so every mode
    runs).  In a test module: ``_one_thread, engine = engine_fixtures()``.
    """
    import pytest

    @pytest.fixture(autouse=True, scope="module")
    def _one_thread() -> Iterator[None]:
        with torch_threads(1):
            yield

    @pytest.fixture(scope="module", name="engine")
    def engine_fixture() -> Engine:
        return give_random_hybrid(served_engine())

    return _one_thread, engine_fixture
