"""Soft tokens for a request, and where they sit in its prompt.

The soft tokens take the place of one document in the QA prompt: the documents handed to
:func:`hyco_rag.prompts.build_messages` are ``[SOFT_MARKER, *kept_texts]``, so the reader
sees ``Document [1]: <k soft tokens>`` followed by the compressor's kept text as the next
documents, in whatever template the engine uses.  The rendered prompt is cut at the marker, the
two sides are tokenized on their own, and k placeholder ids go between them; the engine's
prefill writes the soft tokens over those positions (``inputs_embeds``).  Training builds its
prompts through the same functions, so what the adapter learnt is what it is served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from hyco_rag.hybrid.adapter import HybridAdapter
from hyco_rag.hybrid.features import TokenStates, context_states, pad_states

#: Stands for the soft tokens in a rendered prompt; cut away before tokenization.
SOFT_MARKER = "<<hyco-soft-tokens>>"

#: Most context tokens the adapter reads per request (its passages share them).
MAX_CONTEXT_TOKENS = 2048


def soft_prompt_ids(prompt: str, encode: Callable[[str], list[int]], count: int, placeholder: int = 0) -> tuple[list[int], int]:
    """Token ids of ``prompt`` with ``count`` placeholders where :data:`SOFT_MARKER` was, and
    the index of the first.

    Raises:
        ValueError: the prompt holds the marker not exactly once.
    """
    if prompt.count(SOFT_MARKER) != 1:
        raise ValueError(f"a prompt with soft tokens needs exactly one {SOFT_MARKER!r}; found {prompt.count(SOFT_MARKER)}")
    before, after = prompt.split(SOFT_MARKER)
    prefix = encode(before)
    return prefix + [placeholder] * count + encode(after), len(prefix)


class SoftContext:
    """Questions and passages -> soft tokens, with the served model's own token states.

    Args:
        adapter: the trained hybrid adapter (checked against ``model``).
        model / tokenizer: the served model, frozen.
        states: a shared :class:`~hyco_rag.hybrid.features.TokenStates` (default: a new one).
        max_context_tokens: most context states one request's adapter reads.
    """

    def __init__(
        self,
        adapter: HybridAdapter,
        model: Any,
        tokenizer: Any,
        *,
        states: TokenStates | None = None,
        max_context_tokens: int = MAX_CONTEXT_TOKENS,
    ) -> None:
        adapter.check_compatible(model)
        self.adapter = adapter.to(next(model.parameters()).device).eval()
        self.model = model
        self.states = states if states is not None else TokenStates(model, tokenizer)
        self.max_context_tokens = max_context_tokens

    @property
    def num_soft_tokens(self) -> int:
        return self.adapter.config.num_soft_tokens

    @torch.inference_mode()
    def soft_tokens(
        self, questions: Sequence[str], passages: Sequence[Sequence[str]], *, branch: str | None = None
    ) -> torch.Tensor:
        """``[len(questions), k, hidden]`` soft tokens, one set per (question, passages) pair.

        Raises:
            ValueError: lengths differ, or a request has no non-empty passage.
        """
        if len(questions) != len(passages):
            raise ValueError(f"got {len(questions)} questions but {len(passages)} passage lists")
        device = next(self.model.parameters()).device
        contexts = []
        for i, texts in enumerate(passages):
            kept = [t for t in texts if isinstance(t, str) and t.strip()]
            if not kept:
                raise ValueError(f"request {i} has no passage text to make soft tokens from")
            contexts.append(context_states(self.states.encode(kept), self.max_context_tokens))
        instructions = self.states.encode(list(questions))
        context, context_mask = pad_states(contexts, device)
        instruction, instruction_mask = pad_states(instructions, device)
        soft: torch.Tensor = self.adapter(context, context_mask, instruction, instruction_mask, branch=branch)
        return soft
