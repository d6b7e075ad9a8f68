import pytest

from hyco_rag.prompts import build_messages, build_prompt, format_documents
from hyco_rag.tokens import count_tokens


def test_documents_are_numbered_and_empty_ones_skipped():
    assert format_documents(["alpha", "  ", "", "beta"]) == "Document [1]: alpha\n\nDocument [2]: beta"


def test_closed_book_wording_when_no_documents_survive():
    with_docs = build_messages("Who?", ["Ada wrote it."])[0]["content"]
    without = build_messages("Who?", ["   "])[0]["content"]
    assert "Ada wrote it." in with_docs and "Document [1]" in with_docs
    assert "Document" not in without and without.endswith("Question: Who?")


def test_empty_question_is_rejected():
    with pytest.raises(ValueError, match="question"):
        build_messages("  ", ["doc"])


def test_prompt_uses_the_models_own_chat_template(smollm2):
    _, tokenizer = smollm2
    prompt = build_prompt(tokenizer, "What is the capital of France?", ["Paris is the capital of France."])
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("<|im_start|>assistant")
    assert count_tokens(tokenizer, "Paris is the capital of France.") == len(
        tokenizer("Paris is the capital of France.", add_special_tokens=False)["input_ids"]
    )
