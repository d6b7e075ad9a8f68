"""Hooks never outlive a request, whatever ends it (a client that disconnects mid-stream or
before a non-streaming answer, a timeout, an exception in a forward); ``/metrics`` parses and
counts what happened."""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from hyco_rag.server import BackgroundServer, create_app

from .conftest import PASSAGES, QUESTION, assert_clean, make_engine, snapshot

CHAT = "/v1/chat/completions"


def _body(passage: str, **extra) -> dict:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": QUESTION}],
        "documents": [passage],
        "hyco": {"mode": "combine"},
        **extra,
    }


def _wait_for(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def isolated():
    """A private engine (its counters start at zero) served with a short request timeout."""
    engine = make_engine(3, name="tiny-isolated")
    before = snapshot(engine.model)
    with BackgroundServer(create_app(engine, max_tokens_limit=1000, request_timeout_s=30)) as running:
        yield engine, running, before
    engine.close()


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_disconnect_mid_stream_cancels_the_request(isolated):
    engine, running, before = isolated
    cancelled = engine.stats.snapshot()["requests"].get("cancelled", 0)
    with httpx.Client(base_url=running.base_url, timeout=30) as http:
        with http.stream("POST", CHAT, json=_body(PASSAGES[0], max_tokens=900, stream=True)) as response:
            assert response.status_code == 200
            # the first piece of text arrived; leaving the block closes the connection
            first = next(line for line in response.iter_lines() if '"content": "' in line and '"content": ""' not in line)
            assert first.startswith("data: ")
    _wait_for(lambda: engine.stats.snapshot()["requests"].get("cancelled", 0) > cancelled and engine.running == 0)
    assert engine.stats.snapshot()["completion_tokens"] < 900  # it stopped long before max_tokens
    assert_clean(engine.model, before)


def test_disconnect_before_a_plain_answer_cancels_it(isolated):
    engine, running, before = isolated
    cancelled = engine.stats.snapshot()["requests"].get("cancelled", 0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(running.base_url + CHAT, json=_body(PASSAGES[1], max_tokens=900), timeout=httpx.Timeout(30, read=0.5))
    _wait_for(lambda: engine.stats.snapshot()["requests"].get("cancelled", 0) > cancelled and engine.running == 0)
    assert_clean(engine.model, before)


def test_timeout_leaves_the_model_clean(isolated):
    engine, _, before = isolated
    with BackgroundServer(create_app(engine, request_timeout_s=0.1)) as hurried:
        response = httpx.post(hurried.base_url + CHAT, json=_body(PASSAGES[2], max_tokens=900), timeout=30)
        assert response.status_code == 503 and response.json()["error"]["code"] == "timeout"
        streamed = httpx.post(hurried.base_url + CHAT, json=_body(PASSAGES[2], max_tokens=900, stream=True), timeout=30)
        assert streamed.status_code == 200 and '"code": "timeout"' in streamed.text and "[DONE]" not in streamed.text
    _wait_for(lambda: engine.running == 0)
    assert_clean(engine.model, before)


def test_exception_in_a_forward_leaves_the_model_clean(isolated):
    engine, running, before = isolated
    armed = {"on": True}

    def explode(module, args):
        if armed["on"]:
            raise RuntimeError("boom in a forward")

    handle = engine.model.model.norm.register_forward_pre_hook(explode)
    try:
        response = httpx.post(running.base_url + CHAT, json=_body(PASSAGES[3], max_tokens=20), timeout=30)
    finally:
        handle.remove()
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "boom" in response.json()["error"]["message"]
    assert_clean(engine.model, before)
    ok = httpx.post(running.base_url + CHAT, json=_body(PASSAGES[3], max_tokens=5), timeout=30)
    assert ok.status_code == 200  # the engine serves on after a failed step


def test_metrics_parse_and_count(isolated):
    engine, running, before = isolated
    url = running.base_url
    first = _metrics(url)
    for _ in range(2):  # the same passage twice: the second time its delta comes from the cache
        assert httpx.post(url + CHAT, json=_body(PASSAGES[4], max_tokens=6), timeout=30).status_code == 200
    assert httpx.post(url + CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
    after = _metrics(url)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - first.get(name, 0.0)

    assert grew("hyco_rag_requests_total{status=ok}") == 2
    assert after["hyco_rag_requests_total{status=cancelled}"] >= 2  # the disconnect tests above
    assert grew("hyco_rag_http_requests_total{method=POST,route=/v1/chat/completions,status=200}") == 2
    assert grew("hyco_rag_http_requests_total{method=POST,route=/v1/chat/completions,status=404}") == 1
    assert grew("hyco_rag_delta_cache_hits_total") >= 1 and grew("hyco_rag_delta_cache_misses_total") >= 1
    assert 0 < after["hyco_rag_delta_cache_hit_rate"] < 1
    assert grew("hyco_rag_completion_tokens_total") >= 2 and grew("hyco_rag_prompt_tokens_total") > 20
    assert grew("hyco_rag_request_latency_seconds_count") == 2 and grew("hyco_rag_time_to_first_token_seconds_count") == 2
    assert after["hyco_rag_batch_size_count"] > 0 and after["hyco_rag_decode_steps_total"] > 0
    assert after["hyco_rag_queue_depth"] == 0 and after["hyco_rag_running"] == 0
    assert after["hyco_rag_mean_batch_size"] == pytest.approx(engine.stats.mean_batch_size, rel=0.2)
    assert after["hyco_rag_max_batch_size"] == engine.config.max_batch_size
    assert_clean(engine.model, before)
    assert torch.get_num_threads() == 1
