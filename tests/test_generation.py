"""Chat generation: batched rows equal single rows, streaming equals the blocking call."""

from __future__ import annotations

import pytest

from hyco_rag.generation import ChatGenerator, GenerationConfig


@pytest.fixture(scope="module")
def generator(smollm2):
    model, tokenizer = smollm2
    return ChatGenerator(model, tokenizer, GenerationConfig(max_new_tokens=10, batch_size=4))


def test_answers_with_context(generator):
    out = generator.answer(["Who wrote the note?"], [["The note was written by Ada Lovelace in 1843."]])[0]
    assert "Ada" in out.text
    assert out.prompt_tokens > 20 and 0 < out.completion_tokens <= 10


def test_batched_generation_equals_one_by_one(generator):
    questions = ["What is the capital of France?", "Who wrote Hamlet? Explain in detail why.", "2+2?"]
    documents = [[], ["Hamlet is a tragedy by William Shakespeare."], []]
    batched = generator.answer(questions, documents)
    single = [generator.answer([q], [d])[0] for q, d in zip(questions, documents)]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in single]


def test_offline_generation_decodes_like_hf_generate(generator):
    """The engine's decoder (used here in the caller's thread) reproduces greedy HF generate."""
    import torch

    prompt = generator.prompt("Who wrote Hamlet?", ["Hamlet is a tragedy by William Shakespeare."])
    ids = generator.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = generator.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    expected = generator.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert generator.generate_prompts([prompt])[0].text == expected
    first_line = generator.generate_prompts([prompt], GenerationConfig(max_new_tokens=10, stop_at_newline=True))[0].text
    assert "\n" not in first_line and expected.startswith(first_line)


def test_invalid_settings_are_rejected(generator):
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="document lists"):
        generator.answer(["a", "b"], [["x"]])
