"""`langchain_hyco.ChatHyCo` against the langchain-tests standard suites (unit + integration).

The integration suite really generates with the embedded SmolLM2-135M-Instruct on CPU, with a
small ``max_tokens`` so its ~30 generations stay quick, through the registry's engine
(:func:`hyco_rag.engine.get_engine`, loaded once and shared with test_chat_models.py: the model
by name plus the test translator folder of :func:`hyco_rag.dyprag.testing.strong_translator_dir`,
so the suite never depends on the shipped translator).  It passes no documents (the suite knows
nothing of them), so every call is a plain chat turn; the documents, modes and deltas are
covered by test_chat_models.py.
Tool calling, structured output and multimodal input are not supported: the flags say so, and
the suite skips those tests by itself, so nothing here is overridden.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from hyco_rag.dyprag.testing import strong_translator_dir, torch_threads
from langchain_hyco import ChatHyCo


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Token-by-token decoding of a 135M model gains nothing from a second thread and loses a
    lot when the machine is shared (threads wait on each other at every op); restored after."""
    with torch_threads(1):
        yield


class _ChatHyCoSuite:
    """What both suites need to know: the class, and the features it has (and has not)."""

    @property
    def chat_model_class(self) -> type[ChatHyCo]:
        return ChatHyCo

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatHyCoUnit(_ChatHyCoSuite, ChatModelUnitTests):
    """No generation: construction, standard params, LangSmith params (incl. a model override)."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # No max_tokens/stop here: test_standard_params passes its own next to these.
        return {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "mode": "dyprag"}


class TestChatHyCoIntegration(_ChatHyCoSuite, ChatModelIntegrationTests):
    """Real generations with the served model; documents are not needed by the suite."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "translator": strong_translator_dir(),
            "mode": "dyprag",
            "max_tokens": 6,
        }

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        # An alias of the same embedded model: served by the same cached engine, reported as given.
        return "smollm2-135m-instruct"
