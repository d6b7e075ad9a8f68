"""Every refusal is OpenAI-style JSON with the status that fits: 400/401/404/405/413/422/429/503."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from hyco_rag.server import BackgroundServer, create_app

from .conftest import PASSAGES, QUESTION, make_engine

CHAT = "/v1/chat/completions"


def _body(**extra) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, **extra}


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def test_health_and_models(http, engine):
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == engine.name and health["default_mode"] == "combine"
    assert "combine-hyco" in health["modes"] and health["deltas"] is True
    assert http.get(f"/v1/models/{engine.name}").json()["id"] == engine.name
    _error(http.get("/v1/models/gpt-4"), 404, "model_not_found")


def test_unknown_model_is_404(http, base_url):
    error = _error(http.post(CHAT, json=_body(model="gpt-4o")), 404, "model_not_found")
    assert error["param"] == "model" and error["type"] == "invalid_request_error"
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**_body(model="gpt-4o"))


def test_bad_values_are_400(http):
    error = _error(http.post(CHAT, json=_body(documents=["x"], hyco={"mode": "combine_hyco"})), 400)
    assert error["param"] == "hyco.mode" and "combine-hyco" in error["message"]  # names the choices
    _error(http.post(CHAT, json=_body(max_tokens=10_000)), 400)  # over the server's limit
    assert "max_completion_tokens" in _error(http.post(CHAT, json=_body(max_completion_tokens=257)), 400)["param"]
    _error(http.post(CHAT, json=_body(max_tokens=0)), 400)
    _error(http.post(CHAT, json=_body(temperature=-1)), 400)
    _error(http.post(CHAT, json=_body(top_p=0)), 400)
    _error(http.post(CHAT, json=_body(n=2)), 400)
    _error(http.post(CHAT, json=_body(documents=["x"], hyco={"mode": "hyco", "rate": 1.5})), 400)
    _error(http.post(CHAT, json=_body(documents=["x"], hyco={"rate": 0.5, "target_tokens": 3})), 400)
    _error(http.post(CHAT, json=_body(messages=[{"role": "tool", "content": "x"}])), 400)
    _error(http.post(CHAT, json=_body(messages=[{"role": "assistant", "content": "x"}], documents=["x"])), 400)  # no question
    _error(http.post(CHAT, json=_body(messages=[{"role": "user", "content": "x " * 2000}])), 400)  # longer than the window


def test_malformed_bodies_are_422(http):
    _error(http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}), 422, "invalid_request")
    error = _error(http.post(CHAT, json={"messages": []}), 422)
    assert "model" in error["message"]
    _error(http.post(CHAT, json=_body(documents="one string")), 422)
    _error(http.post(CHAT, json=_body(hyco={"mode": "rag", "colour": "red"})), 422)
    _error(http.post("/v1/compress", json={"query": "q"}), 422)  # no documents


def test_wrong_method_is_405_and_unknown_route_404(http):
    error = _error(http.get(CHAT), 405)
    assert "POST" in error["message"]
    _error(http.delete("/v1/models"), 405)
    _error(http.post("/health"), 405)
    _error(http.get("/v1/nowhere"), 404)


def test_oversized_body_is_413(engine):
    with (
        BackgroundServer(create_app(engine, max_body_bytes=2048)) as small,
        httpx.Client(base_url=small.base_url, timeout=30) as http,
    ):
        big = _body(documents=["word " * 1000])
        _error(http.post(CHAT, json=big), 413, "request_too_large")
        # a chunked body (no Content-Length) is counted as it arrives
        payload = json.dumps(big).encode()
        _error(http.post(CHAT, content=iter([payload[:1000], payload[1000:]]), headers={"content-type": "application/json"}), 413)
        assert http.post(CHAT, json=_body()).status_code == 200


def test_api_key(engine):
    with (
        BackgroundServer(create_app(engine, api_key="s3cret-key")) as secured,
        httpx.Client(base_url=secured.base_url, timeout=30) as http,
    ):
        assert _error(http.post(CHAT, json=_body()), 401, "invalid_api_key")["type"] == "authentication_error"
        _error(http.post(CHAT, json=_body(), headers={"Authorization": "Bearer wrong"}), 401)
        _error(http.post(CHAT, json=_body(), headers={"Authorization": "s3cret-key"}), 401)  # no scheme
        _error(http.get("/v1/models"), 401)
        _error(http.get("/metrics"), 401)
        assert http.get("/health").status_code == 200  # probes need no key
        assert http.post(CHAT, json=_body(), headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        client = openai.OpenAI(base_url=secured.base_url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert openai.OpenAI(base_url=secured.base_url + "/v1", api_key="s3cret-key", max_retries=0).models.list().data


@pytest.fixture(scope="module")
def small_engine():
    """One row at a time and one waiting: the third concurrent request is refused."""
    engine = make_engine(1, name="tiny-small", max_batch_size=1, max_queue=1)
    yield engine
    engine.close()


def test_overload_is_429_and_nothing_is_lost(small_engine):
    async def run(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def one(i: int) -> int:
                response = await http.post(CHAT, json=_body(max_tokens=48, documents=[PASSAGES[i % len(PASSAGES)]]))
                if response.status_code == 429:
                    assert response.json()["error"]["type"] == "rate_limit_error" and response.headers["retry-after"]
                else:
                    assert response.status_code == 200, response.text
                    assert response.json()["usage"]["completion_tokens"] >= 1
                return response.status_code

            return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(6))), 60))

    with BackgroundServer(create_app(small_engine)) as busy:
        statuses = asyncio.run(run(busy.base_url))
        assert len(statuses) == 6 and set(statuses) <= {200, 429}
        assert statuses.count(200) >= 2 and statuses.count(429) >= 1
        client = openai.OpenAI(base_url=busy.base_url + "/v1", api_key="unused", max_retries=0)
        assert client.chat.completions.create(**_body()).choices  # it serves again once idle


def test_timeout_and_closed_engine_are_503():
    engine = make_engine(2, name="tiny-closing")
    try:
        with (
            BackgroundServer(create_app(engine, request_timeout_s=0.05)) as slow,
            httpx.Client(base_url=slow.base_url, timeout=30) as http,
        ):
            assert _error(http.post(CHAT, json=_body(max_tokens=200)), 503, "timeout")["type"] == "server_error"
            engine.close()
            _error(http.post(CHAT, json=_body()), 503, "engine_closed")
            assert http.get("/health").status_code == 503
    finally:
        engine.close()
