"""Parametric evaluation helpers on a tiny random Llama: paired bootstrap, derangements, deltas
applied per row in generation, candidate log-likelihoods equal to a full forward, probe rows."""

from __future__ import annotations

import pytest
import torch

from hyco_rag.evaluation import parametric as P


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.dyprag.encoding import PassageEncoder
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig
    from hyco_rag.generation import ChatGenerator, GenerationConfig
    from hyco_rag.models import load_tokenizer

    tokenizer = load_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    translator = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    with torch.no_grad():  # large heads: every passage visibly changes the output
        for head in list(translator.head_a.values()) + list(translator.head_b.values()):
            head.weight.normal_(std=0.5)
    gen = GenerationConfig(max_new_tokens=4, batch_size=3, stop_at_newline=True)
    reader = P.DeltaReader(ChatGenerator(model, tokenizer, gen), gen)
    return reader, P.DeltaSource(translator, PassageEncoder(model, tokenizer))


def test_bootstrap_interval_and_derangement():
    same = P.bootstrap_diff([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert same["diff"] == same["ci95_low"] == same["ci95_high"] == 0
    up = P.bootstrap_diff([1.0] * 50 + [0.0] * 50, [0.0] * 100)
    assert up["diff"] == pytest.approx(0.5) and 0.35 < up["ci95_low"] < 0.5 < up["ci95_high"] < 0.65
    keys = ["a", "a", "b", "c", "d"]
    partner = P.derangement(keys, seed=3)
    assert all(keys[j] != keys[i] for i, j in enumerate(partner))
    with pytest.raises(ValueError, match="two different passages"):
        P.derangement(["a", "a"])


def test_generation_rows_carry_their_own_delta(tiny):
    from hyco_rag.dyprag.injection import DeltaInjector

    reader, source = tiny
    prompts = [reader.prompt("Who is Ann?"), reader.prompt("Who is Bo?"), reader.prompt("Who is Cy?")]
    deltas = [source.passage("Ann is a potter."), None, source.passage("Cy keeps a heron.")]
    batched = [g.text for g in reader.generate(prompts, deltas, source.delta_config)]
    for prompt, delta, text in zip(prompts, deltas, batched):
        if delta is None:
            alone = reader.generator.generate_prompts([prompt], reader.config)[0].text
        else:
            with DeltaInjector(reader.model, source.delta_config).apply([delta]):
                alone = reader.generator.generate_prompts([prompt], reader.config)[0].text
        assert alone == text


def test_candidate_logprobs_equal_a_full_forward(tiny):
    reader, source = tiny
    tok = reader.tokenizer
    prompt = reader.prompt("What pet does Ann keep?")
    candidates = ["heron", "goat", "peacock feathers"]
    delta = source.passage("Ann keeps a heron.")
    scores = reader.candidate_logprobs(prompt, candidates, delta, source.delta_config)
    from hyco_rag.dyprag.injection import DeltaInjector

    p = tok(prompt, add_special_tokens=False)["input_ids"]
    for cand, score in zip(candidates, scores):
        c = tok(cand + tok.eos_token, add_special_tokens=False)["input_ids"]
        with torch.no_grad(), DeltaInjector(reader.model, source.delta_config).apply(delta):
            lp = reader.model(input_ids=torch.tensor([p + c])).logits[0].float().log_softmax(-1)
        expected = sum(float(lp[len(p) - 1 + k, c[k]]) for k in range(len(c))) / len(c)
        assert score == pytest.approx(expected, abs=1e-4)
    assert scores != reader.candidate_logprobs(prompt, candidates, None)


def test_combine_rules(tiny):
    _, source = tiny
    texts = ["Ann is a potter.", "Bo plays the harp.", "Cy keeps a heron."]
    summed, mean = source.request(texts, "sum"), source.request(texts, "mean")
    assert summed.rank == 6 and mean.rank == 6
    name = next(iter(summed.factors))
    (a_s, b_s), (a_m, b_m) = summed.factors[name], mean.factors[name]
    torch.testing.assert_close((b_s * summed.scaling) @ a_s, 3 * (b_m * mean.scaling) @ a_m)
    assert source.request(texts, "concat").rank == 2
    with pytest.raises(ValueError, match="combine rule"):
        source.request(texts, "max")


def test_synthetic_rows_and_differences(tiny):
    from hyco_rag.evaluation.synthetic import make_cards, probe_questions

    reader, source = tiny
    questions = probe_questions(make_cards(4, "eval"))
    rows = P.run_synthetic(reader, source, questions, ["none", "dyprag", "dyprag_shuffled", "format_only"], greedy=True, progress=False)
    assert [r["mode"] for r in rows] == ["none", "dyprag", "dyprag_shuffled", "format_only"]
    for row in rows:
        assert row["section"] == "synthetic" and row["n"] == 4 and 0 <= row["mc_accuracy"] <= 100
        assert {"em", "f1", "contains"} <= set(row)
    diffs = P.differences(rows, [("dyprag", "dyprag_shuffled")], ["mc", "contains"])
    assert {d["metric"] for d in diffs} == {"mc", "contains"} and all(d["n"] == 4 for d in diffs)
    assert "_per_question" not in P.strip_private(rows)[0]


def test_short_answer_template_has_worked_turns_and_the_default_is_unchanged(tiny):
    from hyco_rag.prompts import DEFAULT_TEMPLATE, SHORT_ANSWER_TEMPLATE, build_messages

    with_docs = build_messages("Who is Ann?", ["Ann is a potter."], SHORT_ANSWER_TEMPLATE)
    assert [m["role"] for m in with_docs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Document [1]: Lyon" in with_docs[1]["content"] and with_docs[2]["content"] == "the Rhone"
    closed = build_messages("Who is Ann?", [], SHORT_ANSWER_TEMPLATE)
    assert "Document" not in closed[1]["content"] and closed[-1]["content"] == "Question: Who is Ann?"
    assert [m["role"] for m in build_messages("Who is Ann?", ["x"], DEFAULT_TEMPLATE)] == ["user"]
