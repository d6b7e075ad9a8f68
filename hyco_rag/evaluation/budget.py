"""Token budgets in the *reader's* tokens, shared by every compression method we compare.

A compression ratio only means something when every method is measured in the same unit. We
count context tokens with the reader LLM's tokenizer (SmolLM2 in the benchmark), per document,
without special tokens, and give each method the same budget ``floor(rate * tokens_in)`` for a
question's documents together. Methods then fill that budget as well as their rule allows and
the benchmark reports the share they actually kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_WORD = re.compile(r"\S+")
# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by whitespace and an
# upper-case letter, digit, quote or bracket. Good enough for Wikipedia prose; the baseline it
# serves is what a RAG builder would write without a sentence-splitting model.
_SENTENCE_END = re.compile(r"[.!?][\"'\)\]]*\s+(?=[A-Z0-9\"'\(\[])")


def check_rate(rate: float) -> float:
    """Validate a kept-share rate: a finite number in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not math.isfinite(rate) or not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate!r}")
    return float(rate)


def token_budget(tokens_in: int, rate: float) -> int:
    """The reader-token budget for a question: ``floor(rate * tokens_in)``, at least 1."""
    if tokens_in < 0:
        raise ValueError(f"tokens_in must be >= 0, got {tokens_in}")
    return max(1, math.floor(check_rate(rate) * tokens_in + 1e-9))


class TokenCounter:
    """Counts tokens with one tokenizer, the same way for every method.

    A document's cost is its token count without special tokens; a context's cost is the sum
    over its non-empty documents (the prompt formatter drops empty ones, so they cost nothing).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        if not text or not text.strip():
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Batched :meth:`count` (one tokenizer call: fast tokenizers parallelise it)."""
        indices = [i for i, text in enumerate(texts) if text and text.strip()]
        counts = [0] * len(texts)
        if indices:
            encoded = self.tokenizer([texts[i] for i in indices], add_special_tokens=False)["input_ids"]
            for i, ids in zip(indices, encoded):
                counts[i] = len(ids)
        return counts

    def total(self, documents: Sequence[str]) -> int:
        return sum(self.count_many(list(documents)))


def split_words(text: str) -> list[str]:
    """Whitespace-separated words: the smallest unit word-level methods keep or drop."""
    return _WORD.findall(text)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences (rule-based; see ``_SENTENCE_END``); never loses characters
    other than the whitespace between sentences."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def truncate_to_budget(counter: TokenCounter, text: str, budget: int) -> str:
    """The longest word-boundary prefix of ``text`` that costs at most ``budget`` tokens."""
    if budget <= 0:
        return ""
    if counter.count(text) <= budget:
        return text
    words = split_words(text)
    low, high = 0, len(words)  # invariant: words[:low] fits, words[:high+1] does not (or high = len)
    while low < high:
        middle = (low + high + 1) // 2
        if counter.count(" ".join(words[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])
