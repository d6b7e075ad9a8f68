"""Model resolution: HF ids, local folders, GGUF files and the embedded offline defaults."""

from hyco_rag.models.embedded import DEFAULT_ENCODER, DEFAULT_LLM
from hyco_rag.models.errors import ModelNotFoundError
from hyco_rag.models.loading import (
    default_device,
    load_causal_lm,
    load_sentence_encoder,
    load_tokenizer,
    resolve_causal_lm,
    resolve_sentence_encoder,
)

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_LLM",
    "ModelNotFoundError",
    "default_device",
    "load_causal_lm",
    "load_sentence_encoder",
    "load_tokenizer",
    "resolve_causal_lm",
    "resolve_sentence_encoder",
]
