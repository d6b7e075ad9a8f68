"""The one token counter: what a text costs in a given tokenizer.

Every figure the project reports (context tokens, prompt tokens, budgets, savings) is counted
here, the same way: the text's own tokens, no special tokens added, and blank texts (empty or
whitespace only, which the prompt builder drops) cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens ``text`` costs with ``tokenizer`` (0 for a blank text)."""
    if not text or not text.strip():
        return 0
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_texts(tokenizer: Any, texts: Iterable[str]) -> int:
    """Total tokens of ``texts`` (blank ones cost nothing, as the prompt builder drops them)."""
    return sum(count_tokens(tokenizer, text) for text in texts)
