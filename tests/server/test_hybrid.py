"""The hybrid modes through the server: ``hyco.mode`` ``hybrid`` / ``combine-hybrid`` with the
``openai`` client, soft tokens in the ``hyco`` stats (streamed or not), and a clear 400 from a
server whose engine has no hybrid adapter."""

from __future__ import annotations

import openai
import pytest

from hyco_rag.engine import SamplingParams
from hyco_rag.server import BackgroundServer, create_app

from .conftest import PASSAGES, QUESTION, FakeCompressor, make_engine

SOFT_TOKENS = 4
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def hybrid_engine():
    engine = make_engine(1, name="tiny-hybrid", compressor=FakeCompressor(), soft_tokens=SOFT_TOKENS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hybrid_client(hybrid_engine):
    with BackgroundServer(create_app(hybrid_engine, default_mode="hybrid", max_tokens_limit=64)) as running:
        yield openai.OpenAI(base_url=running.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _body(documents: list[str], hyco: dict | None) -> dict:
    extra: dict = {"documents": documents}
    if hyco is not None:
        extra["hyco"] = hyco
    return {
        "model": "default",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "extra_body": extra,
    }


def test_a_hybrid_completion_reports_its_soft_tokens(hybrid_client, hybrid_engine):
    answer = hybrid_client.chat.completions.create(**_body(PASSAGES[:2], {"mode": "hybrid", "target_tokens": 12}))
    stats = answer.model_extra["hyco"]
    assert stats["mode"] == "hybrid" and stats["soft_tokens"] == SOFT_TOKENS
    assert stats["passages_injected"] == 0 and stats["delta_rank"] == 0
    assert hybrid_engine.compressor.calls[-1][2] == {"target_tokens": 12 - SOFT_TOKENS}  # one budget, soft tokens in it
    assert SOFT_TOKENS < stats["context_tokens"] < stats["passage_tokens"]
    assert "soft" in stats["timings"] and "compress" in stats["timings"]
    # What the engine answers in the process, the server answers over HTTP.
    local = hybrid_engine.answer(
        QUESTION, PASSAGES[:2], mode="hybrid", target_tokens=12, sampling=SamplingParams(max_tokens=MAX_TOKENS)
    )
    assert answer.choices[0].message.content == local.text
    assert answer.usage.prompt_tokens == local.completion.prompt_tokens


def test_hybrid_streams_combine_hybrid_and_the_default_mode(hybrid_client):
    body = _body(PASSAGES[2:4], {"mode": "combine-hybrid", "rate": 0.5})
    whole = hybrid_client.chat.completions.create(**body)
    stats = whole.model_extra["hyco"]
    assert stats["mode"] == "combine-hybrid" and stats["soft_tokens"] == SOFT_TOKENS
    assert stats["passages_injected"] == 2 and stats["delta_rank"] > 0
    chunks = list(hybrid_client.chat.completions.create(**body, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    final = [c.model_extra["hyco"] for c in chunks if (c.model_extra or {}).get("hyco")]
    assert len(final) == 1 and final[0]["soft_tokens"] == SOFT_TOKENS and final[0]["mode"] == "combine-hybrid"
    # Without hyco.mode the server's default (hybrid here) applies.
    default = hybrid_client.chat.completions.create(**_body(PASSAGES[2:4], None)).model_extra["hyco"]
    assert default["mode"] == "hybrid" and default["soft_tokens"] == SOFT_TOKENS


def test_hybrid_without_an_adapter_is_a_400(base_url):
    """The shared server's engine was built without a hybrid adapter (and none is shipped for it)."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    for mode in ("hybrid", "combine-hybrid"):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as raised:  # a stream too: before its 200, not inside it
                client.chat.completions.create(**_body(PASSAGES[:1], {"mode": mode}), stream=stream)
            error = raised.value.body
            assert raised.value.status_code == 400 and error["type"] == "invalid_request_error"
            assert "'hybrid' and 'combine-hybrid' need a hybrid adapter" in error["message"]
    answer = client.chat.completions.create(**_body(PASSAGES[:1], {"mode": "rag"}))  # the other modes still serve
    assert answer.model_extra["hyco"]["soft_tokens"] == 0 and answer.model_extra["hyco"]["mode"] == "rag"
