"""Passage encoding with the served model: mean pooling, long passages by windows, empty ones refused."""

from __future__ import annotations

import pytest
import torch

from hyco_rag.dyprag import DeltaInjector, LoRADelta, PassageEncoder

PASSAGE = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."


def manual_mean(model, tokenizer, text: str, window: int) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total, count = torch.zeros(model.config.hidden_size), 0
    with torch.no_grad():
        for start in range(0, len(ids), window):
            chunk = torch.tensor([ids[start : start + window]])
            hidden = model.get_decoder()(input_ids=chunk).last_hidden_state[0]
            total += hidden.sum(0)
            count += chunk.shape[1]
    return total / count


def test_mean_pooled_embedding_and_cache(tiny_llama):
    model, tokenizer = tiny_llama
    encoder = PassageEncoder(model, tokenizer)
    other = "A short, different passage."
    embeddings = encoder.encode([PASSAGE, other, PASSAGE])
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(embeddings[0], manual_mean(model, tokenizer, PASSAGE, 10_000), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embeddings[0], embeddings[2])
    torch.testing.assert_close(encoder.encode([other])[0], embeddings[1])  # served from the cache


def test_passage_longer_than_the_window_is_encoded_by_windows(tiny_llama):
    model, tokenizer = tiny_llama
    assert model.config.max_position_embeddings == 128
    long_text = " ".join([PASSAGE] * 20)  # ~500 tokens, 4x the model's window
    encoder = PassageEncoder(model, tokenizer)
    assert encoder.max_tokens == 128
    windows = encoder.windows(long_text)
    assert len(windows) >= 4 and all(len(w) <= 128 for w in windows)
    embedding = encoder.encode([long_text])[0]
    torch.testing.assert_close(embedding, manual_mean(model, tokenizer, long_text, 128), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the model's window"):
        PassageEncoder(model, tokenizer, max_tokens=129)


@pytest.mark.parametrize("empty", ["", "   \n\t"])
def test_empty_passage_is_refused(tiny_llama, empty):
    model, tokenizer = tiny_llama
    with pytest.raises(ValueError, match="passage 1 is empty"):
        PassageEncoder(model, tokenizer).encode([PASSAGE, empty])
    with pytest.raises(ValueError, match="list of passages"):
        PassageEncoder(model, tokenizer).encode(PASSAGE)


def test_encoding_refuses_a_model_with_deltas_applied(tiny_llama):
    model, tokenizer = tiny_llama
    injector = DeltaInjector(model)
    name, (in_features, out_features) = next(iter(injector.target_shapes.items()))
    delta = LoRADelta({name: (torch.zeros(2, in_features), torch.zeros(out_features, 2))})
    with injector.apply(delta), pytest.raises(RuntimeError, match="unmodified model"):
        PassageEncoder(model, tokenizer).encode(["fresh text never cached"])
