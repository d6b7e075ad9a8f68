"""Chat prompts built with the reader model's own chat template.

Every method we compare (no context, full context, compressed, DyPRAG) goes through the same
builder, so a score difference comes from the context, never from prompt wording.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptTemplate:
    """Wording of the QA prompt. ``{context}`` and ``{question}`` are filled in."""

    system: str | None = None
    with_context: str = (
        "Answer the question using the documents. Reply with a short phrase only.\n\n{context}\n\nQuestion: {question}"
    )
    without_context: str = "Answer the question with a short phrase only.\n\nQuestion: {question}"
    document: str = "Document [{index}]: {text}"
    #: Worked turns placed before the real question: ``(question, document, answer)``. With
    #: documents the example shows its document; closed-book it shows the question alone.
    examples: tuple[tuple[str, str, str], ...] = ()


DEFAULT_TEMPLATE = PromptTemplate()

#: Two-shot short-answer prompt: two worked turns (question -> a few words copied from the
#: document) before the real one. SmolLM2-135M answers in whole sentences with the plain
#: template; the worked turns show the expected length. Measured in docs/parametric_benchmark.md.
SHORT_ANSWER_TEMPLATE = PromptTemplate(
    system="Answer with a short phrase: a few words, no sentence.",
    with_context="{context}\n\nQuestion: {question}",
    without_context="Question: {question}",
    examples=(
        (
            "Which river flows through the city of Lyon?",
            "Lyon is a city in France at the meeting point of the Rhone and the Saone rivers.",
            "the Rhone",
        ),
        (
            "In what year did the bridge open?",
            "Work on the bridge began in 1931, and it opened to traffic in 1937.",
            "1937",
        ),
    ),
)

#: The reader prompts benchmarks choose from by name; ``short`` is the strongest one measured
#: for SmolLM2 and the default wherever a benchmark scores a reader.
TEMPLATES = {"short": SHORT_ANSWER_TEMPLATE, "plain": DEFAULT_TEMPLATE}


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
    for example_question, example_document, example_answer in template.examples:
        if context:
            shown = format_documents([example_document], template)
            example_user = template.with_context.format(context=shown, question=example_question)
        else:
            example_user = template.without_context.format(question=example_question)
        messages.append({"role": "user", "content": example_user})
        messages.append({"role": "assistant", "content": example_answer})
    messages.append({"role": "user", "content": user})
    return messages


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> str:
    """Messages rendered for generation: the tokenizer's chat template with the generation cue,
    or, for base models without a template, ``role: text`` blocks ending in ``assistant:``.

    The one renderer: QA prompts, plain chat turns and served requests all come through here.
    """
    plain = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False))
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in plain) + "\n\nassistant:"


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    documents: Sequence[str] = (),
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> str:
    """The full QA prompt string, rendered by :func:`render_chat`, ready to generate."""
    return render_chat(tokenizer, build_messages(question, documents, template))
