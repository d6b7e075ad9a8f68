"""The engine end to end on a tiny random Llama: batching, isolation, bounds, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
import torch

from hyco_rag.dyprag.injection import DeltaInjector, deltas_active
from hyco_rag.engine import (
    Engine,
    EngineClosedError,
    EngineConfig,
    EngineOverloadedError,
    Mode,
    RequestCancelledError,
    RequestTimeoutError,
    SamplingParams,
)
from hyco_rag.engine.batch import DecodeBatch, Row, eos_token_ids

from .conftest import assert_bit_identical, hook_count, random_translator, snapshot

PASSAGES = [
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "Denver Broncos defeated the Carolina Panthers to win Super Bowl 50.",
    "Marie Curie won two Nobel Prizes, in physics and in chemistry.",
    "The Amazon is the largest rainforest on Earth, spanning nine countries.",
]
QUESTIONS = ["When was it completed?", "Who won?", "How many prizes?", "How large is it?"]


def _reference(model, tokenizer, prompt_ids, max_tokens, delta=None):
    """HF generate, one row, greedy: what every batched row must reproduce."""
    ids = torch.tensor([prompt_ids])
    kwargs = dict(
        max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None
    )
    with torch.inference_mode():
        if delta is None:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        else:
            with DeltaInjector(model).apply([delta]):
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


def test_rows_joining_and_leaving_between_steps_match_one_row_generate(tiny, engine):
    model, tokenizer = tiny
    requests = [engine.ask(q, [p], mode=m) for q, p, m in zip(QUESTIONS, PASSAGES, ["dyprag", "rag", "combine", "none"])]
    lengths = [12, 5, 9, 7]  # rows leave at different steps
    batch = DecodeBatch(model, tokenizer, engine.injector, eos_token_ids(model, tokenizer))
    rows = [Row(r.prompt_ids, SamplingParams(max_tokens=n), r.delta) for r, n in zip(requests, lengths)]
    batch.admit(rows[:2])
    batch.step()
    batch.admit(rows[2:3])  # joins a running batch with a longer/shorter cache
    for step in range(20):
        batch.step()
        batch.evict()
        if step == 2:
            batch.admit(rows[3:])
    assert not batch.rows and batch.cache is None
    for row, request, n in zip(rows, requests, lengths):
        assert row.generated == _reference(model, tokenizer, request.prompt_ids, n, request.delta)
        assert row.finish_reason == "length"
    assert hook_count(model) == 0


def test_concurrent_requests_are_batched_and_equal_their_sequential_answers(engine):
    sampling = SamplingParams(max_tokens=10)
    modes = ["dyprag", "combine", "rag", "none", "combine", "dyprag"]
    cases = [(QUESTIONS[i % 4], [PASSAGES[i % 4]], mode) for i, mode in enumerate(modes)]
    sequential = [engine.answer(q, d, mode=m, sampling=sampling).text for q, d, m in cases]
    before = engine.stats.max_batch
    results: list[str | None] = [None] * len(cases)
    barrier = threading.Barrier(len(cases))

    def run(i: int) -> None:
        q, d, m = cases[i]
        request = engine.ask(q, d, mode=m)
        barrier.wait()
        results[i] = engine.generate(request, sampling).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == sequential
    assert engine.stats.max_batch > 1 and engine.stats.max_batch >= before
    # the deltas matter: the same question without them answers differently
    assert sequential[0] != engine.answer(*cases[0][:2], mode="rag", sampling=sampling).text or sequential[1] != sequential[2]


async def test_async_generation_and_streaming_match(engine):
    sampling = SamplingParams(max_tokens=8)
    requests = [engine.ask(q, [p], mode="combine") for q, p in zip(QUESTIONS, PASSAGES)]
    sync = [engine.generate(r, sampling) for r in requests]
    concurrent = await asyncio.gather(*(engine.agenerate(r, sampling) for r in requests))
    assert [c.text for c in concurrent] == [c.text for c in sync]
    pieces = [item async for item in engine.astream(requests[0], sampling)]
    assert "".join(p for p in pieces if isinstance(p, str)) == sync[0].text
    assert pieces[-1].completion_tokens == sync[0].completion_tokens
    assert list(engine.stream(requests[1], sampling))[-1].text == sync[1].text


def test_a_stop_sequence_ends_the_row_at_that_step(engine):
    request = engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="rag")
    full = engine.generate(request, SamplingParams(max_tokens=24))
    assert full.finish_reason == "length" and len(full.text) > 10
    stop = full.text[len(full.text) // 2 :][:3]
    steps = engine.stats.steps
    cut = engine.generate(request, SamplingParams(max_tokens=24, stop=[stop]))
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text)
    assert cut.completion_tokens < full.completion_tokens
    assert engine.stats.steps - steps < 24  # the row left early instead of running to max_tokens


def _wait_idle(engine: Engine, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (engine.running or engine.queue_depth) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.running == 0 and engine.queue_depth == 0


def test_closing_a_stream_cancels_the_request_and_frees_its_slot(tiny, engine):
    model, _ = tiny
    before = snapshot(model)
    request = engine.ask(QUESTIONS[1], [PASSAGES[1]], mode="combine")
    stream = engine.stream(request, SamplingParams(max_tokens=200))
    next(stream)
    stream.close()
    _wait_idle(engine)
    assert hook_count(model) == 0 and not deltas_active(model)
    assert_bit_identical(model, before)
    assert engine.stats.requests.get("cancelled", 0) >= 1


@contextlib.contextmanager
def slowed(model, seconds: float = 0.002):
    """Every forward of ``model`` takes at least ``seconds`` longer: timing tests stay
    meaningful however fast the decode is."""
    handle = model.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


async def test_a_cancelled_task_frees_its_slot(tiny, engine, monkeypatch):
    request = engine.ask(QUESTIONS[2], [PASSAGES[2]], mode="dyprag")
    monkeypatch.setattr(engine._worker.batch, "eos_ids", frozenset())  # the row cannot end early
    with slowed(tiny[0]):  # 300 steps take >= 0.6 s: the task is cancelled while it decodes
        task = asyncio.ensure_future(engine.agenerate(request, SamplingParams(max_tokens=300)))
        while engine.running == 0:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(_wait_idle, engine)
    assert engine.stats.requests.get("cancelled", 0) >= 1


def test_timeouts_overload_and_close(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, random_translator(model), config=EngineConfig(max_batch_size=1, max_queue=2, timeout_s=0.3))
    # 250 steps take >= 0.5 s, longer than the 0.3 s timeout.
    with slowed(model), contextlib.closing(engine):
        request = engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="combine")
        with pytest.raises(RequestTimeoutError, match="timeout of 0.3 s"):
            engine.generate(request, SamplingParams(max_tokens=250))
        _wait_idle(engine)
        handles = [engine.submit(request, SamplingParams(max_tokens=250), timeout_s=None)]
        time.sleep(0.2)  # the first is running; the queue takes two more
        handles += [engine.submit(request, SamplingParams(max_tokens=4), timeout_s=None) for _ in range(2)]
        with pytest.raises(EngineOverloadedError, match="max_queue=2"):
            engine.submit(request, SamplingParams(max_tokens=4))
        handles[0].cancel()
        with pytest.raises(RequestCancelledError):
            handles[0].result()
        assert [h.result().completion_tokens for h in handles[1:]] == [4, 4]
    with pytest.raises(EngineClosedError):
        engine.submit(request, SamplingParams(max_tokens=4))


def test_a_failing_forward_ends_its_rows_and_leaves_the_model_as_it_was(tiny, engine, monkeypatch):
    model, _ = tiny
    before = snapshot(model)
    layer = model.model.layers[1].mlp.down_proj
    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the forward")

    handle = layer.register_forward_hook(explode)
    try:
        request = engine.ask(QUESTIONS[3], [PASSAGES[3]], mode="combine")
        with pytest.raises(RuntimeError, match="boom"):
            engine.generate(request, SamplingParams(max_tokens=10))
    finally:
        handle.remove()
    _wait_idle(engine)
    assert hook_count(model) == 0 and not deltas_active(model)
    assert_bit_identical(model, before)
    assert engine.generate(request, SamplingParams(max_tokens=3)).completion_tokens == 3  # still serving


def test_passage_deltas_are_cached_by_text(engine, monkeypatch):
    text = "A passage seen twice: the cache turns its second translation into a lookup."
    first = engine.passage_deltas([text])[0]
    monkeypatch.setattr(engine.encoder, "encode", lambda passages: (_ for _ in ()).throw(AssertionError("re-encoded")))
    hits = engine.stats.delta_cache_hits
    assert engine.passage_deltas([text])[0] is first
    assert engine.stats.delta_cache_hits == hits + 1


def test_prepare_reports_costs_and_refuses_bad_input(engine):
    request = engine.ask(QUESTIONS[0], [PASSAGES[0], "   "], mode="combine")
    assert request.mode is Mode.COMBINE and request.documents == 1 and request.passages_injected == 1
    assert request.context_tokens == request.passage_tokens > 0 and request.delta is not None
    assert engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="dyprag").context_tokens == 0
    assert engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="rag").delta is None
    chat = engine.prepare([{"role": "user", "content": "hello"}])
    assert chat.mode is None and chat.delta is None and chat.prompt_tokens > 0
    with pytest.raises(ValueError, match="mode must be one of"):
        engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="combine_hyco")
    with pytest.raises(ValueError, match="not one string"):
        engine.ask(QUESTIONS[0], PASSAGES[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role"):
        engine.prepare([{"role": "tool", "content": "x"}], [])
    with pytest.raises(ValueError, match="last message must be the user message"):
        engine.prepare([{"role": "assistant", "content": "x"}], [PASSAGES[0]], mode="rag")
    with pytest.raises(ValueError, match="rate or target_tokens, not both"):
        engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="hyco", rate=0.5, target_tokens=10)
    with pytest.raises(ValueError, match="rate must be"):
        engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="hyco", rate=True)
    with pytest.raises(ValueError, match="more than this engine accepts"):
        engine.ask(QUESTIONS[0], [" ".join(["word"] * 700)], mode="rag")
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="window"):
        engine.submit(request, SamplingParams(max_tokens=500))


def test_compressed_modes_use_the_compressor_with_its_budget(engine):
    seen = {}

    class FirstWords:
        def compress(self, query, documents, **budget):
            seen.update(budget)

            class Result:
                texts = [" ".join(d.split()[:4]) for d in documents]

            return Result()

    request = engine.ask(QUESTIONS[1], [PASSAGES[1]], mode="combine-hyco", compressor=FirstWords(), target_tokens=9)
    assert seen == {"target_tokens": 9}
    assert request.delta is not None and 0 < request.context_tokens < request.passage_tokens
    assert (
        engine.ask(QUESTIONS[1], [PASSAGES[1]], mode="combine", compressor=FirstWords()).context_tokens == request.passage_tokens
    )


def test_delta_modes_without_a_translator_say_why(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, None, missing_translator="no translator shipped for this model")
    try:
        assert engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="rag").delta is None
        with pytest.raises(ValueError, match="no translator shipped"):
            engine.ask(QUESTIONS[0], [PASSAGES[0]], mode="dyprag")
    finally:
        engine.close()


def test_registry_loads_once_per_key_and_resolves_names_once(tiny, tmp_path, monkeypatch):
    from hyco_rag.engine import registry

    model, tokenizer = tiny
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loads, resolves = [], []
    real_load, real_resolve = registry.load_engine_parts, __import__("hyco_rag.models", fromlist=["x"]).resolve_causal_lm
    monkeypatch.setattr(registry, "load_engine_parts", lambda *a: loads.append(a) or real_load(*a))
    monkeypatch.setattr("hyco_rag.models.resolve_causal_lm", lambda name: resolves.append(name) or real_resolve(name))
    try:
        first = registry.get_engine(str(folder), None, "cpu")
        resolved = len(resolves)
        again = registry.get_engine(str(folder), None, "cpu")
        assert again is first and len(loads) == 1
        assert len(resolves) == resolved  # a lookup of a known name resolves (hashes) nothing
        assert first.translator is None and "no usable parameter translator" in (first.missing_translator or "")
    finally:
        registry.clear_engines()
    assert registry.engine_count() == 0


def test_passages_are_encoded_beside_decoding_and_waiting_ones_share_a_batch(engine, monkeypatch):
    """Encoding runs on the job thread: a running request keeps decoding while an encoding
    is blocked, and the encodings that queued meanwhile run together (at most
    ``max_job_items`` per call)."""
    calls: list[int] = []
    release = threading.Event()
    real = engine.encoder.encode

    def encode(passages):
        calls.append(len(passages))
        if len(calls) == 1:
            assert release.wait(30)
        return real(passages)

    monkeypatch.setattr(engine.encoder, "encode", encode)
    texts = [f"Fresh passage number {i} about the batching of encodings." for i in range(5)]
    threads = [threading.Thread(target=engine.ask, args=(QUESTIONS[1], [texts[0]]), kwargs={"mode": "dyprag"})]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.005)
    assert calls == [1]  # the first encoding is running (blocked)
    # A request that needs no encoding decodes to its end meanwhile.
    assert engine.generate(engine.ask(QUESTIONS[0], [], mode="none"), SamplingParams(max_tokens=12)).completion_tokens > 0
    threads += [threading.Thread(target=engine.ask, args=(QUESTIONS[1], [text]), kwargs={"mode": "dyprag"}) for text in texts[1:]]
    for thread in threads[1:]:
        thread.start()
    while len(engine._worker._jobs) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join()
    assert calls[0] == 1 and sum(calls) == 5
    assert calls[1:] == [4] or calls[1:] == [3, 1] or calls[1:] == [1, 3]  # the four waiting ones: a bounded merge


async def test_a_cancel_is_never_swallowed_when_an_event_arrives_at_the_same_moment():
    """``asyncio.wait_for`` (Python 3.10/3.11) returns the inner result when the waiter is
    cancelled just as that result arrives; a request handle waits for a token event every
    decode step, so it must use a wait that raises the cancellation."""
    from hyco_rag.engine.worker import wait_with_timeout

    for timeout_s in (10.0, None):
        for _ in range(50):
            events: asyncio.Queue[int] = asyncio.Queue()
            waiter = asyncio.ensure_future(wait_with_timeout(events.get(), timeout_s))
            await asyncio.sleep(0)
            events.put_nowait(1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
    with pytest.raises(asyncio.TimeoutError):
        await wait_with_timeout(asyncio.Queue().get(), 0.01)
