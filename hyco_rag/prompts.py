"""Chat prompts built with the reader model's own chat template.

Every method we compare (no context, full context, compressed, DyPRAG) goes through the same
builder, so a score difference comes from the context, never from prompt wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptTemplate:
    """Wording of the QA prompt. ``{context}`` and ``{question}`` are filled in."""

    system: str | None = None
    with_context: str = (
        "Answer the question using the documents. Reply with a short phrase only.\n\n"
        "{context}\n\nQuestion: {question}"
    )
    without_context: str = "Answer the question with a short phrase only.\n\nQuestion: {question}"
    document: str = "Document [{index}]: {text}"


DEFAULT_TEMPLATE = PromptTemplate()


def format_documents(documents: Sequence[str], template: PromptTemplate = DEFAULT_TEMPLATE) -> str:
    """Number the documents; empty ones are skipped so compression can drop a passage."""
    kept = [text.strip() for text in documents if text and text.strip()]
    return "\n\n".join(template.document.format(index=i + 1, text=text) for i, text in enumerate(kept))


def build_messages(
    question: str,
    documents: Sequence[str] = (),
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> list[dict[str, str]]:
    """Chat messages for a QA turn; with no (non-empty) documents, the closed-book wording."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    context = format_documents(documents, template)
    if context:
        user = template.with_context.format(context=context, question=question.strip())
    else:
        user = template.without_context.format(question=question.strip())
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": user})
    return messages


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    documents: Sequence[str] = (),
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> str:
    """The full prompt string, rendered by the tokenizer's chat template, ready to generate."""
    messages = build_messages(question, documents, template)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Base models without a chat template: plain text with an answer cue.
    return "\n\n".join(message["content"] for message in messages) + "\nAnswer:"


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Number of tokens ``text`` costs with ``tokenizer`` (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
