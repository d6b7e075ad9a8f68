"""The OpenAI-compatible app through Ray Serve: an ingress, 2 generator replicas and a
compressor deployment on a local Ray bounded to 2 CPUs.

Every replica and the reference server build the same seeded tiny engine
(:func:`hyco_rag.distributed.testing.tiny_engine`), so greedy answers must match exactly:
concurrent requests through Ray answer what the single-process server answers, errors and
``/metrics`` have the same shape, and killing a generator replica mid-load loses nothing (each
request gets its answer, transparently retried, or a clear 503; none hangs).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from .conftest import free_port

PASSAGES = [
    "The Rhone river flows through Lyon and reaches the Mediterranean near Marseille.",
    "The Danube crosses ten countries, more than any other river in the world.",
    "The Thames runs through London; its tidal stretch reaches Teddington Lock.",
    "The Amazon carries more water than the next seven largest rivers together.",
    "The Nile was long held to be the longest river, at about 6,650 kilometres.",
    "The Mekong rises on the Tibetan Plateau and ends in a delta in Vietnam.",
]
QUESTION = "What does the passage say about the river?"
FACTORY = {"factory": "hyco_rag.distributed.testing:tiny_engine", "factory_kwargs": {"seed": 0}}
#: Long answers for the kill test, so requests are in flight on both replicas when one dies.
LONG = 150


def _body(passage: str, mode: str = "combine", max_tokens: int = 12, **extra) -> dict:
    hyco = {"mode": mode, "rate": 0.5} if "hyco" in mode else {"mode": mode}
    return {
        "model": "default",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "documents": [passage],
        "hyco": hyco,
        **extra,
    }


def _openai_kwargs(body: dict) -> dict:
    extra = {k: body[k] for k in ("documents", "hyco")}
    return {k: v for k, v in body.items() if k not in extra} | {"extra_body": extra}


def _stable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "timings"}


@pytest.fixture(scope="module")
def reference():
    """The single-process server over the same tiny engine."""
    from hyco_rag.distributed.testing import tiny_engine
    from hyco_rag.server import BackgroundServer, create_app

    engine = tiny_engine(0)
    try:
        with BackgroundServer(create_app(engine)) as server:
            yield server.base_url
    finally:
        engine.close()


@pytest.fixture(scope="module")
def ray_url(local_ray):
    from ray import serve

    from hyco_rag.distributed import RayServeConfig
    from hyco_rag.distributed.serve import run_local

    config = RayServeConfig.from_dict(
        {
            "engine": FACTORY,
            "compressor": {"factory": "hyco_rag.distributed.testing:fake_compressor"},
            "generator_deployment": {"num_replicas": 2, "num_cpus": 0.5},
            "compressor_deployment": {"num_cpus": 0.25},
            "ingress_deployment": {"num_cpus": 0.25},
            "request_timeout_s": 60,
        }
    )
    port = free_port()
    run_local(config, port=port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


async def _ask_all(base_url: str, bodies: list[dict], stream_every: int = 3) -> list[tuple[str, dict, dict]]:
    """All bodies at once through the async OpenAI client; every ``stream_every``-th streams."""
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)

    async def one(i: int, body: dict) -> tuple[str, dict, dict]:
        kwargs = _openai_kwargs(body)
        if i % stream_every == 0:
            chunks = [
                c
                async for c in await client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
            ]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
            return text, _stable(final.model_extra["hyco"]), chunks[-1].usage.model_dump()
        answer = await client.chat.completions.create(**kwargs)
        return answer.choices[0].message.content, _stable(answer.model_extra["hyco"]), answer.usage.model_dump()

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))), 120)
    finally:
        await client.close()


def test_concurrent_openai_requests_answer_as_the_single_process_server(reference, ray_url):
    bodies = [_body(p, mode) for mode in ("combine", "rag", "combine-hyco") for p in PASSAGES[:4]]
    expected = asyncio.run(_ask_all(reference, bodies, stream_every=len(bodies) + 1))  # reference: all unary
    got = asyncio.run(_ask_all(ray_url, bodies))
    assert len({text for text, _, _ in expected}) > len(bodies) // 2  # answers depend on the request
    for want, have, body in zip(expected, got, bodies):
        assert have == want, (body["hyco"], body["documents"])
    # the compressing mode really went through the compressor deployment (the fake halves)
    hyco = [stats for _, stats, _ in got if stats["mode"] == "combine-hyco"]
    assert hyco and all(s["context_tokens"] < s["passage_tokens"] for s in hyco)


def test_same_routes_errors_and_metrics(reference, ray_url):
    with httpx.Client(base_url=reference, timeout=60) as one, httpx.Client(base_url=ray_url, timeout=60) as ray:
        assert ray.get("/v1/models").json()["data"][0]["id"] == one.get("/v1/models").json()["data"][0]["id"] == "tiny-llama"
        health = {k: v for k, v in ray.get("/health").json().items() if k not in ("queue_depth", "running")}
        assert health == {k: v for k, v in one.get("/health").json().items() if k not in ("queue_depth", "running")}
        bad = [
            ("post", "/v1/chat/completions", {**_body(PASSAGES[0]), "model": "gpt-4"}),  # 404 model_not_found
            ("post", "/v1/chat/completions", {**_body(PASSAGES[0]), "n": 2}),  # 400
            ("post", "/v1/chat/completions", {**_body(PASSAGES[0]), "hyco": {"mode": "fast"}}),  # 400 hyco.mode
            ("post", "/v1/chat/completions", {"model": "default"}),  # 422
            # refused by the engine on the replica (window): still a 400 before any stream starts
            ("post", "/v1/chat/completions", {**_body(PASSAGES[0], max_tokens=1020), "stream": True}),
            ("get", "/v1/nothing", None),  # 404 route
        ]
        for method, path, payload in bad:
            kwargs = {"json": payload} if payload is not None else {}
            want, have = getattr(one, method)(path, **kwargs), getattr(ray, method)(path, **kwargs)
            assert (have.status_code, have.json()) == (want.status_code, want.json()), path
        compress = {"query": QUESTION, "documents": PASSAGES[:2], "rate": 0.5}
        assert ray.post("/v1/compress", json=compress).json() == one.post("/v1/compress", json=compress).json()
        names = {line.split("{")[0].split(" ")[0] for line in ray.get("/metrics").text.splitlines() if not line.startswith("#")}
        reference_names = {
            line.split("{")[0].split(" ")[0] for line in one.get("/metrics").text.splitlines() if not line.startswith("#")
        }
        assert names == reference_names
        metrics = ray.get("/metrics").text
    # the replicas' engine events reached the ingress's registry
    ok = next(line for line in metrics.splitlines() if line.startswith('hyco_rag_requests_total{status="ok"}'))
    assert float(ok.split()[-1]) >= 12
    steps = next(line for line in metrics.splitlines() if line.startswith("hyco_rag_decode_steps_total"))
    assert float(steps.split()[-1]) > 12


def _generator_replicas() -> list:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
    return [ray.get_actor(name, namespace="serve") for name in names]


async def _load_and_kill(base_url: str, bodies: list[dict], streams: set[int]) -> tuple[list[dict], float]:
    """Send every body at once; kill one generator replica once the first stream sent text."""
    import ray

    first_text = asyncio.Event()
    limits = httpx.Limits(max_connections=len(bodies) + 2)

    async def one(client: httpx.AsyncClient, i: int, body: dict) -> dict:
        if i not in streams:
            response = await client.post("/v1/chat/completions", json=body)
            data = response.json()
            text = data["choices"][0]["message"]["content"] if response.status_code == 200 else None
            return {"status": response.status_code, "text": text, "error": data.get("error")}
        text, error = "", None
        async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            if response.status_code != 200:
                return {"status": response.status_code, "text": None, "error": json.loads(await response.aread())["error"]}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                    break
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    text += event["choices"][0]["delta"]["content"]
                    first_text.set()
        return {"status": 200 if error is None else 503, "text": text if error is None else None, "error": error}

    async def killer() -> None:
        await asyncio.wait_for(first_text.wait(), 60)
        ray.kill(_generator_replicas()[0], no_restart=True)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=90, limits=limits) as client:
        results, _ = await asyncio.wait_for(
            asyncio.gather(asyncio.gather(*(one(client, i, b) for i, b in enumerate(bodies))), killer()), 150
        )
    return results, time.perf_counter() - start


def test_killing_a_generator_replica_mid_load_loses_no_request(reference, ray_url):
    """Runs last in this module: the killed replica is replaced by Serve afterwards."""
    assert len(_generator_replicas()) == 2
    bodies = [_body(PASSAGES[i % len(PASSAGES)], max_tokens=LONG) for i in range(12)]
    with httpx.Client(base_url=reference, timeout=120) as one:
        expected = {p: one.post("/v1/chat/completions", json=_body(p, max_tokens=LONG)).json() for p in PASSAGES}
    streams = {0, 3, 6, 9}
    results, wall = asyncio.run(_load_and_kill(ray_url, bodies, streams))
    assert wall < 150  # none hung
    for body, result in zip(bodies, results):
        if result["status"] == 200:
            assert result["text"] == expected[body["documents"][0]]["choices"][0]["message"]["content"]
        else:
            # a clear OpenAI-style 503 saying the replica is gone (a stream: after its text began)
            assert result["status"] == 503, result
            assert result["error"]["code"] == "backend_unavailable" and result["error"]["type"] == "server_error"
    failed = sum(1 for r in results if r["status"] != 200)
    assert failed <= len(streams)  # unary requests are retried transparently
    retries = float(
        next(
            line.split()[-1]
            for line in httpx.get(ray_url + "/metrics", timeout=30).text.splitlines()
            if line.startswith("hyco_rag_backend_retries_total")
        )
    )
    assert retries + failed >= 1  # the kill really hit requests in flight
