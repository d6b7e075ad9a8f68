"""The hybrid modes through the engine: soft tokens in the prompt, in one batch with other rows."""

from __future__ import annotations

import pytest
import torch

from hyco_rag.engine import Engine, EngineConfig, SamplingParams
from hyco_rag.hybrid import SOFT_MARKER, HybridAdapter, soft_prompt_ids

from ..engine.conftest import assert_bit_identical, make_talkative_llama, random_translator, snapshot

PASSAGES = [
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "Denver Broncos defeated the Carolina Panthers to win Super Bowl 50.",
    "Marie Curie won two Nobel Prizes, in physics and in chemistry.",
]
QUESTION = "When was it completed?"


class FirstWords:
    """A compressor stand-in: the first ``target_tokens // 2`` words of each passage."""

    def __init__(self) -> None:
        self.budgets: list[dict] = []

    def compress(self, query, documents, **budget):
        self.budgets.append(budget)
        words = max(1, budget.get("target_tokens", 8) // (2 * len(documents)))

        class Result:
            texts = [" ".join(d.split()[:words]) for d in documents]

        return Result()


@pytest.fixture(scope="module")
def parts():
    model, tokenizer = make_talkative_llama()
    torch.manual_seed(0)
    adapter = HybridAdapter.for_model(model, width=32, heads=4, num_soft_tokens=4).eval()
    return model, tokenizer, adapter


@pytest.fixture(scope="module")
def engine(parts):
    model, tokenizer, adapter = parts
    engine = Engine(
        model,
        tokenizer,
        random_translator(model),
        compressor=FirstWords(),
        hybrid=adapter,
        config=EngineConfig(max_batch_size=8, timeout_s=60),
    )
    yield engine
    engine.close()


def _greedy_reference(model, prompt_ids, soft, start, max_tokens):
    """Greedy tokens of one row with plain HF forwards (no engine, no batch)."""
    ids = torch.tensor([prompt_ids])
    embeds = model.get_input_embeddings()(ids).clone()
    embeds[0, start : start + soft.shape[0]] = soft
    out = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(inputs_embeds=embeds).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    return out


def test_soft_prompt_ids_put_placeholders_where_the_marker_was():
    def encode(text):
        return [ord(c) for c in text]

    ids, start = soft_prompt_ids(f"ab{SOFT_MARKER}cd", encode, 3, placeholder=0)
    assert ids == [97, 98, 0, 0, 0, 99, 100] and start == 2
    with pytest.raises(ValueError, match="exactly one"):
        soft_prompt_ids("no marker", encode, 3)


def test_a_hybrid_request_carries_soft_tokens_and_counts_them_in_its_budget(engine):
    request = engine.ask(QUESTION, PASSAGES, mode="hybrid", target_tokens=16)
    assert request.soft_embeds is not None and request.soft_tokens == 4 and request.delta is None
    assert engine.compressor.budgets[-1] == {"target_tokens": 12}  # 16 minus the 4 soft tokens
    assert request.context_tokens >= 4 and request.stats()["soft_tokens"] == 4
    assert SOFT_MARKER not in engine.tokenizer.decode(request.prompt_ids)
    assert request.prompt_ids[request.soft_start : request.soft_start + 4] == [engine.tokenizer.pad_token_id or 0] * 4
    combined = engine.ask(QUESTION, PASSAGES, mode="combine-hybrid", target_tokens=16)
    assert combined.delta is not None and combined.soft_tokens == 4
    only_soft = engine.ask(QUESTION, PASSAGES, mode="hybrid", target_tokens=4)
    assert only_soft.context_tokens == 4  # the soft tokens took the whole budget: no kept text


def test_batched_hybrid_rows_decode_as_each_would_alone(engine, parts):
    model = parts[0]
    before = snapshot(model)
    requests = [
        engine.ask(QUESTION, PASSAGES[:2], mode="hybrid", target_tokens=12),
        engine.ask("Who won?", PASSAGES[1:], mode="rag"),
        engine.ask("How many prizes?", PASSAGES, mode="hybrid", target_tokens=20),
        engine.ask("Who won?", PASSAGES[1:], mode="combine-hybrid", target_tokens=12),
    ]
    sampling = SamplingParams(max_tokens=6)
    together = engine.generate_many(requests, sampling)
    for request, completion in zip(requests[:3:2], together[:3:2]):
        reference = _greedy_reference(model, request.prompt_ids, request.soft_embeds, request.soft_start, 6)
        assert engine.tokenizer.decode(reference, skip_special_tokens=True).strip() == completion.text.strip()
    alone = [engine.generate(request, sampling) for request in requests]
    assert [c.text for c in alone] == [c.text for c in together]
    assert_bit_identical(model, before)  # the soft tokens never touch weights, the deltas left


def test_soft_tokens_change_the_answer_and_explicit_ones_are_used(engine):
    sampling = SamplingParams(max_tokens=8)
    own = engine.ask(QUESTION, PASSAGES, mode="hybrid", target_tokens=12)
    noise = torch.randn(own.soft_embeds.shape, generator=torch.Generator().manual_seed(5)) * 3
    other = engine.ask(QUESTION, PASSAGES, mode="hybrid", target_tokens=12, soft_embeds=noise)
    assert torch.equal(other.soft_embeds, noise) and other.prompt_ids == own.prompt_ids
    assert engine.generate(own, sampling).text != engine.generate(other, sampling).text
    mlp = engine.ask(QUESTION, PASSAGES, mode="hybrid", target_tokens=12, soft_branch="mlp")
    assert not torch.allclose(mlp.soft_embeds, own.soft_embeds)


def test_hybrid_misuse_is_refused(engine, parts):
    with pytest.raises(ValueError, match="cannot keep a prompt"):
        engine.prepare([{"role": "user", "content": "hi"}], PASSAGES, mode="hybrid", keep_prompt=True)
    with pytest.raises(ValueError, match=r"soft_embeds must be \[k, 64\]"):
        engine.ask(QUESTION, PASSAGES, mode="hybrid", soft_embeds=torch.zeros(4, 3))
    model, tokenizer, _ = parts
    bare = Engine(model, tokenizer, compressor=FirstWords(), hybrid="/nonexistent/adapter")
    try:
        with pytest.raises(FileNotFoundError, match="no hybrid adapter"):
            bare.ask(QUESTION, PASSAGES, mode="hybrid")
    finally:
        bare.close()


def test_concurrent_requests_share_the_adapters_calls(engine):
    import threading
    import time

    context = engine.hybrid
    original = context.soft_tokens
    calls = []

    def counted(questions, passages, **kwargs):
        calls.append(len(questions))
        if len(calls) == 1:
            time.sleep(0.5)  # the others queue meanwhile
        return original(questions, passages, **kwargs)

    questions = [f"Question {i}?" for i in range(5)]
    alone = [engine.soft_tokens(q, PASSAGES) for q in questions]
    calls.clear()
    context.soft_tokens = counted
    try:
        got: dict[int, torch.Tensor] = {}
        threads = [
            threading.Thread(target=lambda i=i: got.__setitem__(i, engine.soft_tokens(questions[i], PASSAGES))) for i in range(5)
        ]
        threads[0].start()
        time.sleep(0.1)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        del context.soft_tokens
    assert sum(calls) == 5 and len(calls) < 5  # waiting requests were merged into shared calls
    for i in range(5):
        assert torch.allclose(got[i], alone[i], atol=1e-5)
