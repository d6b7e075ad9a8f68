"""Training pipeline on a tiny random Llama: batched per-passage LoRAs equal separate runs,
stage 1 writes resumable shards, stage 2 trains and saves a loadable translator, CLI --quick."""

from __future__ import annotations

import json

import pytest
import torch

from hyco_rag.dyprag import ParameterTranslator
from hyco_rag.dyprag.training import (
    PragConfig,
    SequenceBuilder,
    TrainingPassage,
    TranslatorTrainConfig,
    collect_prag_pairs,
    load_pairs,
    train_group_loras,
    train_passage_lora,
    train_translator,
)
from hyco_rag.dyprag.training.data import IGNORE
from hyco_rag.dyprag.training.optim import SlotAdam

from .conftest import make_tiny_llama

PASSAGES = [
    TrainingPassage("p0", "Paris is the capital of France. It lies on the Seine.", (("What is the capital of France?", ("Paris",)), ("Which river?", ("the Seine",)))),
    TrainingPassage("p1", "The Nile flows north through Egypt into the Mediterranean Sea.", (("Where does the Nile flow?", ("into the Mediterranean",)),)),
    TrainingPassage("p2", "Marie Curie won Nobel Prizes in physics and chemistry.", (("What did Curie win?", ("Nobel Prizes",)),)),
]
QUICK = PragConfig(steps=2, max_closed=2, max_context=1, max_passage_tokens=32, group_size=2, shard_size=2, measure=True, lr=5e-2)


@pytest.fixture(scope="module")
def model():
    model, tokenizer = make_tiny_llama(0)  # a private copy: training freezes its parameters
    return model, tokenizer


def test_sequences_take_loss_on_answers_only(model):
    _, tokenizer = model
    builder = SequenceBuilder(tokenizer)
    closed, context = builder.sequences(PASSAGES[0], kinds=("closed", "context"), max_closed=1)
    for seq in (closed, context):
        labelled = [t for t in seq.labels if t != IGNORE]
        assert tokenizer.decode(labelled).startswith("Paris") or tokenizer.decode(labelled).startswith("the Seine")
        assert labelled[-1] == tokenizer.eos_token_id
    assert "Seine" not in tokenizer.decode(closed.input_ids[: closed.labels.index(closed.labels[-1])]).split("Question")[0]
    assert PASSAGES[0].text in tokenizer.decode(context.input_ids)
    passage = builder.passage_lm(PASSAGES[0])
    assert passage.labels == passage.input_ids


def test_slot_adam_only_moves_active_slots():
    p = torch.zeros(3, 2, requires_grad=True)
    optimizer = SlotAdam([p], lr=0.1)
    p.grad = torch.ones(3, 2)
    optimizer.step(torch.tensor([True, False, True]))
    assert torch.allclose(p[0], torch.full((2,), -0.1)) and torch.equal(p[1], torch.zeros(2))
    p.grad = torch.ones(3, 2)
    optimizer.step(torch.tensor([False, True, False]))  # slot 1's first step: full lr despite others' history
    assert torch.allclose(p[1], torch.full((2,), -0.1)) and torch.allclose(p[0], torch.full((2,), -0.1))


def test_batched_passages_equal_separate_training_and_reduce_loss(model):
    m, tokenizer = model
    together, stats = train_group_loras(m, tokenizer, PASSAGES[:2], QUICK)
    for i, passage in enumerate(PASSAGES[:2]):
        alone, _ = train_group_loras(m, tokenizer, [passage], QUICK)
        for name, (a, b) in alone.items():
            torch.testing.assert_close(together[name][0][i], a[0], rtol=1e-3, atol=1e-5)
            torch.testing.assert_close(together[name][1][i], b[0], rtol=1e-3, atol=1e-5)
    for s in stats:
        assert s["closed_loss_after"] < s["closed_loss_before"]
    assert all(not p.requires_grad for p in m.parameters())


def test_stage1_shards_resume_and_stage2_end_to_end(model, tmp_path):
    m, tokenizer = model
    pairs = tmp_path / "pairs"
    collect_prag_pairs(m, tokenizer, PASSAGES, pairs, QUICK, progress=False)
    manifest, shards = load_pairs(pairs)
    assert [s["count"] for s in manifest["shards"]] == [2, 1]
    assert shards[0].embeddings.shape == (2, 32) and len(shards[0].factors) == 6
    assert [p.id for s in shards for p in s.passages] == ["p0", "p1", "p2"]
    assert not list(pairs.glob("*.tmp"))
    stamp = (pairs / "shard-00000.safetensors").stat().st_mtime_ns
    collect_prag_pairs(m, tokenizer, PASSAGES, pairs, QUICK, progress=False)  # resumes: keeps the shards
    assert (pairs / "shard-00000.safetensors").stat().st_mtime_ns == stamp

    out = tmp_path / "translator"
    config = TranslatorTrainConfig(hidden_dim=8, epochs=2, batch_passages=2, val_passages=1, max_closed=1)
    translator = train_translator(m, tokenizer, pairs, out, config, progress=False)
    report = json.loads((out / "training.json").read_text())
    assert report["train_passages"] == 2 and len(report["history"]) == 2
    assert {"mse", "lm", "kl"} <= set(report["history"][0])
    assert set(report["validation"]) == {"none", "prag_lora", "translator"}
    loaded = ParameterTranslator.from_pretrained(out, model=m)
    torch.testing.assert_close(  # stored as fp16
        loaded(torch.ones(1, 32))["model.layers.0.mlp.up_proj"][0], translator(torch.ones(1, 32))["model.layers.0.mlp.up_proj"][0],
        rtol=2e-2, atol=1e-4,
    )

    other, _ = make_tiny_llama(seed=5)
    with pytest.raises(ValueError, match="do not match this model"):
        train_translator(other, tokenizer, pairs, None, config, progress=False)


def test_prag_at_query_time(model):
    m, tokenizer = model
    delta = train_passage_lora(m, tokenizer, PASSAGES[1].text, config=PragConfig(steps=1, max_passage_tokens=16))
    assert delta.rank == 2 and len(delta.factors) == 6
    assert any(b.abs().sum() > 0 for _, b in delta.factors.values())
    with pytest.raises(ValueError, match="empty passage"):
        train_passage_lora(m, tokenizer, "  ")


def test_cli_quick_runs_both_stages(tiny_llama_dir, tmp_path, shared_data, capsys):
    from hyco_rag.cli import main

    pairs, out = tmp_path / "pairs", tmp_path / "translator"
    common = ["--quick", "--model", str(tiny_llama_dir), "--threads", "1", "--no-progress"]
    assert main(["train", "prag", "--output", str(pairs), *common]) == 0
    assert main(["train", "translator", "--pairs", str(pairs), "--output", str(out), *common]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    text = capsys.readouterr().out
    assert "stage 1: 4 passage LoRAs" in text and "stage 2: translator" in text
    assert main(["train", "translator", "--pairs", str(tmp_path / "none"), *common]) == 2
    assert "hyco-rag train prag" in capsys.readouterr().err


# ---------------------------------------------------------------------------- context distillation


def test_distill_cache_matches_the_encoder_and_a_full_teacher_forward(model, tmp_path):
    from hyco_rag.dyprag.encoding import PassageEncoder
    from hyco_rag.dyprag.training.distill import DistillConfig, PromptParts, build_cache

    m, tokenizer = model
    config = DistillConfig(max_passage_tokens=64, top_k=5, shard_size=2)
    records = build_cache(m, tokenizer, PASSAGES, tmp_path / "cache", config)
    assert [r["id"] for r in records] == ["p0", "p1", "p2"]
    # The feature is what PassageEncoder computes for the (truncated) passage.
    encoded = PassageEncoder(m, tokenizer, cache_size=0).encode([records[0]["text"]])[0]
    torch.testing.assert_close(records[0]["feature"], encoded, rtol=1e-4, atol=1e-4)
    # The teacher's top-k come from passage + prompt + answer in one sequence (prefix-cache trick is exact).
    parts = PromptParts.build(tokenizer)
    q = records[0]["questions"][0]
    ids = tokenizer(records[0]["text"], add_special_tokens=False)["input_ids"] + parts.prefix + q["suffix"]
    with torch.no_grad():
        logits = m(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    offset = len(ids) - len(q["suffix"])
    positions = torch.arange(offset + q["start"] - 1, len(ids) - 1)
    top = logits[positions].topk(5, dim=-1)
    assert torch.equal(top.indices.int(), q["top_index"])
    torch.testing.assert_close(q["top_logprob"].float(), top.values, rtol=1e-2, atol=1e-2)
    # Rerun: the shards are kept.
    stamp = (tmp_path / "cache" / "cache-00000.pt").stat().st_mtime_ns
    build_cache(m, tokenizer, PASSAGES, tmp_path / "cache", config)
    assert (tmp_path / "cache" / "cache-00000.pt").stat().st_mtime_ns == stamp


def test_distill_trains_resumes_and_reports(model, tmp_path):
    from hyco_rag.dyprag.training.distill import DistillConfig, build_cache, train_distilled

    m, tokenizer = model
    config = DistillConfig(max_passage_tokens=48, top_k=4, hidden_dim=8, batch_passages=2, epochs=2, checkpoint_every=1, lr=1e-2)
    records = build_cache(m, tokenizer, PASSAGES, tmp_path / "cache", config)
    translator, report = train_distilled(m, tokenizer, records, config, tmp_path / "train", val_records=records[:2])
    assert report["steps"] == 4 and len(report["history_first_last"][1]) >= 1
    assert {"teacher", "none", "own", "shuffled"} <= set(report["heldout_squad_answer_ce"])
    assert any(torch.count_nonzero(b) for _, b in translator(records[0]["feature"][None]).values())
    again, report2 = train_distilled(m, tokenizer, records, config, tmp_path / "train")  # resumes at the end
    x = records[1]["feature"][None]
    for name, (_, b) in translator(x).items():
        torch.testing.assert_close(again(x)[name][1], b)


def test_leak_checks():
    from hyco_rag.dyprag.training import load_training_passages
    from hyco_rag.dyprag.training.distill import TrainEvalOverlapError, check_no_overlap, load_squad_train, passage_key

    keys = {passage_key(PASSAGES[0].text)}
    check_no_overlap(keys, [PASSAGES[1].text])
    with pytest.raises(TrainEvalOverlapError, match="contaminated"):
        check_no_overlap(keys, ["  " + PASSAGES[0].text.upper() + " "])  # whitespace/case do not hide it
    with pytest.raises(ValueError, match="v1.1 dev"):
        load_training_passages("squad/cs224n-dev-v2.0.json")
    with pytest.raises(TrainEvalOverlapError):
        load_squad_train("squad/dev-v1.1.json")


def test_cli_distill_quick(tiny_llama_dir, tmp_path, shared_data, capsys):
    from hyco_rag.cli.train_dyprag import main

    out = tmp_path / "translator"
    args = ["distill", "--quick", "--model", str(tiny_llama_dir), "--threads", "1", "--no-progress",
            "--work", str(tmp_path / "work"), "--output", str(out), "--max-passage-tokens", "48"]
    assert main(args) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["train_passages"] == {"squad": 6, "cards": 6} and "command" in report
    assert len((out / "training_passages.txt").read_text().split()) == 12
    ParameterTranslator.from_pretrained(out)
    assert "translator (" in capsys.readouterr().out
