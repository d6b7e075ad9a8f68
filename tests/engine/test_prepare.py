"""Request preparation: one prompt per mode through hyco_rag.prompts, history, kept prompts,
explicit deltas and the checks that run before anything is submitted."""

from __future__ import annotations

import json

import pytest

from hyco_rag.dyprag.delta import DeltaValueError
from hyco_rag.dyprag.injection import deltas_active
from hyco_rag.engine import Engine, SamplingParams
from hyco_rag.prompts import build_messages, build_prompt, render_chat

from .conftest import hook_count, random_translator

QUESTION = "When was the tower finished?"
EIFFEL = "The Eiffel Tower in Paris was finished in 1889."
TESLA = "Nikola Tesla was born in 1856 in Smiljan."


def test_each_mode_renders_the_core_qa_prompt(engine, tiny):
    _, tokenizer = tiny
    messages = [{"role": "user", "content": QUESTION}]
    docs = [EIFFEL, "   ", TESLA]  # blank passages are ignored, as the prompt builder ignores them
    with_docs, closed = build_prompt(tokenizer, QUESTION, [EIFFEL, TESLA]), build_prompt(tokenizer, QUESTION, [])
    expected = {"none": closed, "rag": with_docs, "dyprag": closed, "combine": with_docs}
    for mode, prompt in expected.items():
        request = engine.prepare(messages, docs, mode=mode)
        assert request.prompt == prompt, mode
        assert request.prompt_ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert request.documents == 2 and request.passage_tokens > 20
        assert (request.delta is not None) == (mode in ("dyprag", "combine"))
        assert request.context_tokens == (request.passage_tokens if mode in ("rag", "combine") else 0)
        stats = request.stats()
        assert stats["mode"] == mode and stats["passages_injected"] == (2 if request.delta is not None else 0)
        json.dumps(stats)


def test_history_question_and_kept_prompts(engine, tiny):
    _, tokenizer = tiny
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    plain = engine.prepare(history + [{"role": "user", "content": QUESTION}])
    assert plain.prompt == render_chat(tokenizer, history + [{"role": "user", "content": QUESTION}])
    asked = engine.prepare(history, [EIFFEL], mode="rag", question=QUESTION)
    assert asked.prompt == render_chat(tokenizer, history + build_messages(QUESTION, [EIFFEL]))
    kept = engine.prepare([], [EIFFEL], mode="dyprag", prompt="raw prompt", keep_prompt=True)
    assert kept.prompt == "raw prompt" and kept.delta is not None


def test_explicit_deltas_win_and_nan_deltas_are_refused_before_submission(engine, tiny):
    model, _ = tiny
    other = engine.combined_delta([TESLA])
    explicit = engine.ask(QUESTION, [EIFFEL], mode="dyprag", delta=other)
    own = engine.ask(QUESTION, [TESLA], mode="dyprag")
    sampling = SamplingParams(max_tokens=6)
    assert engine.generate(explicit, sampling).text == engine.generate(own, sampling).text
    broken = engine.combined_delta([EIFFEL])
    name = next(iter(broken.factors))
    broken = type(broken)(
        {**broken.factors, name: (broken.factors[name][0].clone().fill_(float("nan")), broken.factors[name][1])}, broken.scaling
    )
    with pytest.raises(DeltaValueError, match="NaN"):
        engine.ask(QUESTION, [EIFFEL], mode="dyprag", delta=broken)
    assert hook_count(model) == 0 and not deltas_active(model)


def test_a_translator_of_another_model_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError):
        Engine(model, tokenizer, random_translator(_smaller_model()))


def _smaller_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    return LlamaForCausalLM(config).eval()
