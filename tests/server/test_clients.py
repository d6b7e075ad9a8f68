"""Real clients against the running server: the ``openai`` package (sync and async, streaming
and not), LangChain ``ChatOpenAI`` and LlamaIndex ``OpenAILike``, documents and ``hyco``
through ``extra_body``; concurrent requests get their one-at-a-time greedy answers."""

from __future__ import annotations

import asyncio

import openai
import pytest

from .conftest import PASSAGES, QUESTION


def _ask(document: str, question: str = QUESTION) -> dict:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 10,
        "temperature": 0,
        "extra_body": {"documents": [document], "hyco": {"mode": "combine"}},
    }


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def sequential(client):
    """Each passage's answer, asked one at a time."""
    return [client.chat.completions.create(**_ask(passage)).choices[0].message.content for passage in PASSAGES]


def test_models_list_and_alias(client, engine):
    ids = [model.id for model in client.models.list()]
    assert ids == [engine.name, "default"]
    assert client.models.retrieve("default").id == "default"


def test_openai_sync_completion_usage_and_extension(client, engine, sequential):
    answer = client.chat.completions.create(**_ask(PASSAGES[0]))
    assert answer.object == "chat.completion" and answer.model == engine.name
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == sequential[0] and sequential[0]
    assert answer.choices[0].finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.completion_tokens >= 1 and usage.prompt_tokens > 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stats = answer.model_extra["hyco"]
    assert stats["mode"] == "combine" and stats["passages_injected"] == 1 and stats["delta_rank"] > 0
    # the answer depends on the request's own passage
    assert len(set(sequential)) == len(sequential)


def test_openai_stream_matches_and_reports_usage(client, sequential):
    chunks = list(client.chat.completions.create(**_ask(PASSAGES[1]), stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == sequential[1]
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    # without include_usage no usage chunk is sent
    plain = list(client.chat.completions.create(**_ask(PASSAGES[1]), stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_plain_chat_turn_without_documents(client):
    answer = client.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_completion_tokens=5,
    )
    assert answer.model_extra["hyco"]["mode"] is None and answer.model_extra["hyco"]["documents"] == 0
    assert answer.usage.completion_tokens <= 5


def test_modes_change_what_the_request_uses(client, engine):
    body = _ask(PASSAGES[2])
    stats = {}
    for mode in ("none", "rag", "hyco", "dyprag", "combine", "combine-hyco"):
        body["extra_body"] = {
            "documents": [{"text": PASSAGES[2], "metadata": {"source": "test"}}],
            "hyco": {"mode": mode, "rate": 0.5} if "hyco" in mode else {"mode": mode},
        }
        stats[mode] = client.chat.completions.create(**body).model_extra["hyco"]
    assert stats["none"]["context_tokens"] == 0 and stats["none"]["delta_rank"] == 0
    assert stats["rag"]["context_tokens"] == stats["rag"]["passage_tokens"] > 0 and stats["rag"]["delta_rank"] == 0
    assert 0 < stats["hyco"]["context_tokens"] < stats["hyco"]["passage_tokens"]  # the fake compressor halves
    assert stats["dyprag"]["context_tokens"] == 0 and stats["dyprag"]["delta_rank"] > 0
    assert (
        stats["combine-hyco"]["delta_rank"] > 0
        and stats["combine-hyco"]["context_tokens"] < stats["combine-hyco"]["passage_tokens"]
    )
    # the server's default mode (combine) applies without hyco.mode
    default = client.chat.completions.create(**{**body, "extra_body": {"documents": [PASSAGES[2]]}})
    assert default.model_extra["hyco"]["mode"] == "combine"


def test_stop_sequences_and_seeded_sampling(client, sequential):
    words = sequential[3].split()
    assert len(words) >= 3
    stop = words[2]
    cut = client.chat.completions.create(**_ask(PASSAGES[3]), stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == sequential[3][: sequential[3].find(stop)].rstrip()
    assert cut.choices[0].finish_reason == "stop"
    assert (
        client.chat.completions.create(**_ask(PASSAGES[3]), stop=stop).choices[0].message.content
        == cut.choices[0].message.content
    )
    sampled = [
        client.chat.completions.create(**{**_ask(PASSAGES[3]), "temperature": 1.0, "top_p": 0.9, "seed": 7})
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_concurrent_requests_get_their_sequential_answers(base_url, engine, sequential):
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60) as client:

            async def one(i: int) -> str:
                if i % 2:  # half streaming, half not, in the same batch
                    text = ""
                    async for chunk in await client.chat.completions.create(**_ask(PASSAGES[i]), stream=True):
                        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
                    return text
                answer = await client.chat.completions.create(**_ask(PASSAGES[i]))
                return answer.choices[0].message.content

            return list(await asyncio.gather(*(one(i) for i in range(len(PASSAGES)))))

    before = (engine.stats.steps, engine.stats.step_rows)
    answers = asyncio.run(run())
    assert answers == sequential
    steps, rows = engine.stats.steps - before[0], engine.stats.step_rows - before[1]
    assert rows > steps  # more than one row per decode step on average: they shared forwards


def test_langchain_chat_openai(base_url, sequential):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=base_url,
        api_key="unused",
        model="default",
        temperature=0,
        max_tokens=10,
        max_retries=0,
        extra_body={"documents": [PASSAGES[4]], "hyco": {"mode": "combine"}},
    )
    message = llm.invoke(QUESTION)
    assert message.content == sequential[4]
    assert message.usage_metadata["output_tokens"] >= 1
    streamed = "".join(chunk.content for chunk in llm.stream(QUESTION))
    assert streamed == sequential[4]


def test_langchain_chat_openai_async(base_url, sequential):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="unused", model="default", temperature=0, max_tokens=10, max_retries=0)
    bound = llm.bind(extra_body={"documents": [PASSAGES[5]], "hyco": {"mode": "combine"}})
    assert asyncio.run(bound.ainvoke(QUESTION)).content == sequential[5]


def test_llama_index_openai_like(base_url, sequential):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model="default",
        api_base=base_url,
        api_key="unused",
        is_chat_model=True,
        context_window=1024,
        max_tokens=10,
        temperature=0,
        max_retries=0,
        additional_kwargs={"extra_body": {"documents": [PASSAGES[0]], "hyco": {"mode": "combine"}}},
    )
    messages = [ChatMessage(role="user", content=QUESTION)]
    assert llm.chat(messages).message.content == sequential[0]
    streamed = [r.delta for r in llm.stream_chat(messages)]
    assert "".join(d or "" for d in streamed) == sequential[0]
    assert asyncio.run(llm.achat(messages)).message.content == sequential[0]
