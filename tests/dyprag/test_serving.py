"""`hyco_rag.dyprag.serving`: what the LangChain / LlamaIndex chat adapters share.

Runs on the session's embedded SmolLM2 with a random translator whose deltas visibly change the
answer (short generations, seconds): the prompt each mode renders, deltas, stop sequences whole vs
streamed, sync vs async, costs; the process-wide runtime registry on the tiny random Llama.
"""

from __future__ import annotations

import asyncio
import json
import random
from types import SimpleNamespace

import pytest

from hyco_rag.dyprag import ParameterTranslator, ParametricRAG
from hyco_rag.dyprag import serving
from hyco_rag.dyprag.serving import (
    Completion,
    StopSequenceFilter,
    check_mode,
    prepare_request,
    render_chat,
    sampling_config,
    served_runtime,
)
from hyco_rag.dyprag.testing import BANANA, EIFFEL, QUESTION, TESLA, strong_runtime, torch_threads, weights_digest
from hyco_rag.generation import ChatGenerator
from hyco_rag.prompts import build_messages

CONFIG = sampling_config(6, 0.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def runtime(smollm2):
    """SmolLM2 with large random translator heads (:func:`hyco_rag.dyprag.testing.strong_runtime`)."""
    model, tokenizer = smollm2
    return strong_runtime(ParametricRAG(ChatGenerator(model, tokenizer), None))


# --------------------------------------------------------------------------- stop sequences


@pytest.mark.parametrize("seed", range(5))
def test_stop_filter_emits_the_same_text_whole_or_in_any_pieces(seed: int) -> None:
    text = "  The tower was built in 1889.\nQuestion: next one\n  "
    stop = ["\nQuestion:", "zzz"]
    whole = StopSequenceFilter(stop).clean(text)
    assert whole == "The tower was built in 1889."
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    streamed = StopSequenceFilter(stop)
    out = [streamed.feed(p) for p in pieces]
    assert "".join(out) + streamed.finish() == whole
    assert streamed.stopped
    assert not any("Question" in o for o in out)  # a stop sequence is never emitted, even in part


def test_stop_filter_without_stop_sequences_only_strips() -> None:
    cleaner = StopSequenceFilter(None)
    assert cleaner.feed("  \n") == ""  # leading whitespace is dropped
    assert cleaner.feed("a b ") == "a b"  # trailing whitespace held back ...
    assert cleaner.feed(" c") == "  c"  # ... and released when text follows
    assert cleaner.finish() == "" and not cleaner.stopped
    with pytest.raises(ValueError, match="list of strings"):
        StopSequenceFilter("\n")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- preparing requests


def test_each_mode_renders_the_core_qa_prompt(runtime) -> None:
    generator = runtime.generator
    messages = [{"role": "user", "content": QUESTION}]
    docs = [EIFFEL, "   ", TESLA]  # blank passages are ignored, as the prompt builder ignores them
    expected = {
        "none": generator.prompt(QUESTION, []),
        "rag": generator.prompt(QUESTION, [EIFFEL, TESLA]),
        "dyprag": generator.prompt(QUESTION, []),
        "combine": generator.prompt(QUESTION, [EIFFEL, TESLA]),
    }
    for mode, prompt in expected.items():
        request = prepare_request(runtime, messages, docs, mode=mode, config=CONFIG)
        assert request.prompt == prompt, mode
        assert request.documents == 2 and request.passage_tokens > 20
        assert (request.delta is not None) == (mode in ("dyprag", "combine"))
        assert request.context_tokens == (request.passage_tokens if mode in ("rag", "combine") else 0)
        stats = request.stats()
        assert stats["passages_injected"] == (2 if request.delta is not None else 0)
        assert stats["delta_rank"] == (request.delta.rank if request.delta is not None else 0)
        json.dumps(stats)


def test_history_question_and_kept_prompts(runtime) -> None:
    tokenizer = runtime.tokenizer
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    plain = prepare_request(runtime, history + [{"role": "user", "content": QUESTION}], None, config=CONFIG)
    assert plain.prompt == render_chat(tokenizer, history + [{"role": "user", "content": QUESTION}])
    assert plain.mode is None and plain.delta is None and plain.stats()["documents"] == 0

    asked = prepare_request(runtime, history, [EIFFEL], mode="rag", question=QUESTION, config=CONFIG)
    assert asked.prompt == render_chat(tokenizer, history + build_messages(QUESTION, [EIFFEL]))  # history kept in front

    kept = prepare_request(runtime, [], [EIFFEL], mode="dyprag", prompt="raw prompt", keep_prompt=True, config=CONFIG)
    assert kept.prompt == "raw prompt" and kept.delta is not None


def test_combine_compresses_the_prompt_copy_only(runtime) -> None:
    seen = []

    class Halver:
        def compress(self, query, documents):
            seen.append((query, list(documents)))
            return SimpleNamespace(texts=[d[: len(d) // 2] for d in documents])

    full = prepare_request(runtime, [{"role": "user", "content": QUESTION}], [EIFFEL], mode="combine", config=CONFIG)
    short = prepare_request(
        runtime, [{"role": "user", "content": QUESTION}], [EIFFEL], mode="combine", config=CONFIG, compressor=Halver()
    )
    assert seen == [(QUESTION, [EIFFEL])]
    assert short.context_tokens < full.context_tokens and "compress" in short.timings
    assert short.delta_rank == full.delta_rank and short.passage_tokens == full.passage_tokens
    probe = prepare_request(runtime, [{"role": "user", "content": QUESTION}], None, config=CONFIG)
    answers = []
    for delta in (full.delta, short.delta):  # the deltas still come from the full passage
        probe.delta = delta
        answers.append(probe.generate().text)
    assert answers[0] == answers[1]

    class Broken:
        def compress(self, query, documents):
            return SimpleNamespace(texts="not a list")

    with pytest.raises(TypeError, match="list of strings"):
        prepare_request(runtime, [{"role": "user", "content": QUESTION}], [EIFFEL], mode="combine", compressor=Broken())


def test_bad_requests_are_refused_with_the_reason(runtime) -> None:
    user = [{"role": "user", "content": QUESTION}]
    with pytest.raises(ValueError, match="mode must be one of"):
        prepare_request(runtime, user, [EIFFEL], mode="bogus")
    with pytest.raises(ValueError, match="last message must be the user message"):
        prepare_request(runtime, [{"role": "assistant", "content": "x"}], [EIFFEL], mode="rag")
    with pytest.raises(ValueError, match="not one string"):
        prepare_request(runtime, user, EIFFEL, mode="rag")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"documents\[1\] must be a string"):
        prepare_request(runtime, user, [EIFFEL, 3], mode="rag")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one message"):
        prepare_request(runtime, [], None)
    no_translator = ParametricRAG(runtime.generator, None)
    with pytest.raises(ValueError, match="ship none here"):
        prepare_request(no_translator, user, [EIFFEL], mode="dyprag", missing_translator="we ship none here")
    assert prepare_request(no_translator, user, [EIFFEL], mode="rag").delta is None  # context modes still work
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling_config(0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        sampling_config(4, -1.0)
    assert sampling_config(4, 0.7).do_sample and not sampling_config(4, 0.0).do_sample
    assert check_mode("rag") == "rag"


# --------------------------------------------------------------------------- generation


def test_generate_stream_and_async_agree_and_deltas_never_outlive_the_request(runtime) -> None:
    before = weights_digest(runtime.model)
    user = [{"role": "user", "content": QUESTION}]
    with_delta = prepare_request(runtime, user, [BANANA], mode="dyprag", config=CONFIG)
    without = prepare_request(runtime, user, [], mode="dyprag", config=CONFIG)
    whole = with_delta.generate()
    assert isinstance(whole, Completion) and whole.finish_reason in ("stop", "length")
    assert whole.completion_tokens >= 1 and whole.prompt_tokens > 5
    assert "generate" in with_delta.timings and "translate" in with_delta.timings
    assert whole.text != without.generate().text  # the delta acted ...
    assert weights_digest(runtime.model) == before  # ... and left nothing behind

    items = list(with_delta.stream())
    pieces, final = items[:-1], items[-1]
    assert all(isinstance(p, str) for p in pieces) and isinstance(final, Completion)
    assert "".join(pieces) == final.text == whole.text
    assert final.prompt_tokens == whole.prompt_tokens

    async def run():
        done = await with_delta.agenerate()
        streamed = [item async for item in with_delta.astream()]
        return done, streamed

    done, streamed = asyncio.run(run())
    assert done.text == whole.text and streamed[-1].text == whole.text
    assert "".join(streamed[:-1]) == whole.text
    stats = with_delta.stats(done)
    assert stats["total_tokens"] == done.prompt_tokens + done.completion_tokens and stats["passages_injected"] == 1


def test_a_stop_sequence_ends_generation_with_reason_stop(runtime) -> None:
    user = [{"role": "user", "content": QUESTION}]
    request = prepare_request(runtime, user, None, config=sampling_config(12, 0.0))
    text = request.generate().text
    assert len(text) > 2
    stop = [text[1:3]]  # occurs in the answer: it must be cut before it
    cut = request.generate(stop)
    assert cut.text == text[: text.index(stop[0])].rstrip() and cut.finish_reason == "stop"
    streamed = list(request.stream(stop))
    assert "".join(streamed[:-1]) == cut.text and streamed[-1].finish_reason == "stop"


# --------------------------------------------------------------------------- the registry


def test_runtimes_are_loaded_once_per_model_translator_and_device(tiny_llama_dir, monkeypatch) -> None:
    loads = []
    original = ChatGenerator.from_pretrained.__func__

    def counting(cls, name_or_path=None, **kwargs):
        loads.append(name_or_path)
        return original(cls, name_or_path, **kwargs)

    def no_shipped_translator(path=None, **kwargs):
        raise FileNotFoundError(f"no translator at {path}")

    monkeypatch.setattr(ChatGenerator, "from_pretrained", classmethod(counting))
    monkeypatch.setattr(ParameterTranslator, "from_pretrained", staticmethod(no_shipped_translator))
    monkeypatch.setattr(serving, "_RUNTIMES", {})
    first = served_runtime(str(tiny_llama_dir), None, "cpu")
    again = served_runtime(str(tiny_llama_dir), None, "cpu")
    assert again is first and len(loads) == 1 and serving.served_runtime_count() == 1
    # no translator ships for this model: the context modes work, the delta modes say why not
    assert first.runtime.translator is None and "no parameter translator is shipped" in first.missing_translator
    user = [{"role": "user", "content": QUESTION}]
    assert prepare_request(first.runtime, user, [EIFFEL], mode="rag").context_tokens > 0
    with pytest.raises(ValueError, match="no parameter translator is shipped"):
        prepare_request(first.runtime, user, [EIFFEL], mode="dyprag", missing_translator=first.missing_translator)
    with pytest.raises(FileNotFoundError):  # an explicit translator must exist
        served_runtime(str(tiny_llama_dir), str(tiny_llama_dir / "no-such-translator"), "cpu")
    assert len(loads) == 2  # a new (model, translator) pair is a new runtime
    serving.clear_served_runtimes()
    assert serving.served_runtime_count() == 0
