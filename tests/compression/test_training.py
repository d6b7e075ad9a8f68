"""Training: labels from real data, reader distillation, and a quick end-to-end run of the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyco_rag.compression.training.data import TrainGroup, TrainPassage


def test_squad_groups_have_gold_distractors_and_spans(shared_data):
    from hyco_rag.compression.training.data import squad_groups

    groups = squad_groups(limit=6, passage_only_limit=2, seed=3)
    answered = [g for g in groups if g.fine_labels]
    assert len(answered) == 6 and len(groups) == 8
    assert all(g.source == "squad" for g in answered) and all(g.id.startswith("sqexp-train") for g in groups)
    for group in answered:
        assert len(group.gold) == 1 and len(group.passages) == 4
        gold = group.passages[group.gold[0]]
        for start, end in gold.answer_spans:
            assert gold.text[start:end] in group.answers
        assert any(s <= a and b <= e for s, e in gold.evidence_spans for a, b in gold.answer_spans)
    texts = {p.text for g in groups for p in g.passages}
    from hyco_rag.data import load_squad

    dev = {p.text for e in load_squad() for p in e.passages}
    assert not texts & dev  # nothing from the v1.1 dev benchmark


def test_prepared_targets_mark_answer_words_and_sentence(shared_data):
    from transformers import AutoTokenizer

    from hyco_rag.compression.config import CompressorConfig
    from hyco_rag.compression.features import PairTemplate
    from hyco_rag.compression.training.trainer import prepare_group
    from hyco_rag.models import resolve_sentence_encoder

    text = "Paris is big. The tower was built in 1889 by Eiffel. It is tall."
    start = text.index("1889")
    group = TrainGroup("x", "When was the tower built?", ["1889"], [
        TrainPassage("Rome is old. It has a forum.", 0.0),
        TrainPassage(text, 1.0, [(start, start + 4)], [(text.index("The tower"), text.index(" It is"))]),
    ], "test")
    config = CompressorConfig()
    tokenizer = AutoTokenizer.from_pretrained(resolve_sentence_encoder())
    prep = prepare_group(0, group, tokenizer, PairTemplate(tokenizer), config, {})
    assert prep.chunk_target.tolist() == [0.0, 1.0]
    assert prep.sentence_target[1].tolist() == [0.0, 1.0, 0.0]
    chunk = prep.chunks[1]
    words = [text[s:e] for s, e in zip(*(np.asarray(text_bounds) for text_bounds in _unit_bounds(text, chunk.units)))]
    # The answer, and in the answer sentence the query's content words (anchors) are retained.
    assert [w for w, y in zip(words, prep.word_local[1]) if y] == ["tower", "built", "1889"]
    assert sum(prep.word_keep[1]) == len("The tower was built in 1889 by Eiffel.".split())


def _unit_bounds(text, units):
    from hyco_rag.compression.words import segment

    seg = segment(text)
    return seg.starts[units], seg.ends[units]


def test_distilled_labels_favour_the_answer_sentence(smollm2, tmp_path):
    from hyco_rag.compression.training.distill import distill, soft_labels_for

    text = "The weather was mild that spring. The bridge was opened in 1932 by the mayor. Tourists like the view."
    start = text.index("1932")
    group = TrainGroup("d1", "In what year was the bridge opened?", ["1932"], [
        TrainPassage(text, 1.0, [(start, start + 4)], []),
    ], "test")
    cache = distill([group], tmp_path / "soft.json", reader_model=smollm2, max_candidates=3)
    labels = soft_labels_for(group, cache)[0]
    assert labels.shape == (3,)
    assert labels.argmax() == 1 and labels[1] == 1.0
    assert json.loads((tmp_path / "soft.json").read_text())["labels"]  # cached on disk
    again = distill([group], tmp_path / "soft.json", reader_model=smollm2)
    assert again == cache


def test_quick_training_run_saves_a_working_compressor(shared_data, tmp_path):
    from hyco_rag.cli import main
    from hyco_rag.compression import HyCoCompressor

    out = tmp_path / "trained"
    assert main(["train", "compressor", "--quick", "--output", str(out), "--threads", "1",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 3
    compressor = HyCoCompressor.from_pretrained(out, device="cpu")
    result = compressor.compress("When was it built?", ["It was built in 1889. It is tall. Paris is nice."], rate=0.5)
    assert result.stats["compressed_tokens"] <= result.stats["original_tokens"] // 2
    # Resuming continues from the checkpoint instead of starting over.
    assert main(["train", "compressor", "--quick", "--output", str(out), "--threads", "1", "--max-steps", "4",
                 "--resume", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 4


def test_train_config_rejects_bad_values():
    from hyco_rag.compression.training.trainer import TrainConfig

    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup=1.5)


def test_quick_lora_run_trains_deltas_end_to_end(shared_data, tmp_path):
    """The GPU-oriented path (low-rank deltas, joint attention) runs on CPU too and loads back merged."""
    from safetensors.torch import load_file

    from hyco_rag.cli import main
    from hyco_rag.compression import HyCoCompressor

    out = tmp_path / "lora"
    assert main(["train", "compressor", "--quick", "--output", str(out), "--threads", "1", "--lora-rank", "2",
                 "--attention", "full", "--max-steps", "2", "--cache-dir", str(tmp_path / "cache")]) == 0
    weights = load_file(str(out / "model.safetensors"))
    deltas = [name for name in weights if ".lora_b" in name]
    assert deltas and any(weights[name].abs().sum() > 0 for name in deltas)  # the deltas moved
    assert all(".layer.0." not in name for name in deltas)  # nothing below the exit layer
    compressor = HyCoCompressor.from_pretrained(out, device="cpu")
    assert compressor.config.attention == "full" and compressor.config.lora_rank == 2
    assert compressor.compress("q?", ["Some text here. More text there."], rate=0.5).passages[0].compressed_tokens > 0


def test_training_splits_are_disjoint_from_every_evaluation_set(shared_data):
    """The default training data passes the leak check once shared distractors are dropped."""
    from hyco_rag.compression.training.data import (
        check_no_leak,
        evaluation_texts,
        holdout_multihop,
        load_split,
        multihop_groups,
        remove_eval_paragraphs,
        squad_groups,
    )

    paragraphs, questions = evaluation_texts()
    held = holdout_multihop()
    assert {name: len(rows) for name, rows in held.items()} == {"hotpotqa": 100, "2wikimultihopqa": 100, "musique": 100}
    assert len(load_split("hotpotqa", "train")) == 220 and len(load_split("2wikimultihopqa", "train")) == 400
    assert load_split("musique", "train") == []
    train_ids = {e.id for family in ("hotpotqa", "2wikimultihopqa") for e in load_split(family, "train")}
    assert not train_ids & {e.id for rows in held.values() for e in rows}
    groups = squad_groups(limit=20, passage_only_limit=5, seed=1) + multihop_groups(max_passages=4)
    report = check_no_leak(remove_eval_paragraphs(groups, paragraphs, questions), paragraphs, questions)
    assert report["groups"] >= 20 + 5 + 600 and report["eval_paragraphs"] > 2000


def test_leak_check_raises_on_an_evaluation_paragraph_or_question(shared_data):
    from hyco_rag.compression.training.data import (
        DataLeakError,
        check_no_leak,
        evaluation_texts,
        remove_eval_paragraphs,
        squad_groups,
    )
    from hyco_rag.data import load_squad

    paragraphs, questions = evaluation_texts(multihop=False)
    dev = load_squad(limit=1)[0]
    gold = dev.passages[dev.gold[0]].text
    clean = TrainGroup("c", "Where is it?", ["x"], [TrainPassage("Some clean training text.", 1.0)], "test")
    check_no_leak([clean], paragraphs, questions)
    # A v1.1 dev paragraph, with changed case and spacing, as a distractor of a training group.
    leaky = TrainGroup("l", "Where is it?", ["x"], [TrainPassage("Some clean training text.", 1.0),
                                                    TrainPassage("  " + gold.upper().replace(" ", "  "), 0.0)], "test")
    with pytest.raises(DataLeakError, match="paragraph of l"):
        check_no_leak([clean, leaky], paragraphs, questions)
    with pytest.raises(DataLeakError, match="question of q"):
        check_no_leak([TrainGroup("q", dev.question, ["x"], [TrainPassage("clean", 1.0)], "test")], paragraphs, questions)
    # The filter drops the shared distractor (group kept) and a group whose gold is a dev paragraph.
    gold_leak = TrainGroup("g", "Where?", ["x"], [TrainPassage(gold, 1.0)], "test")
    filtered = remove_eval_paragraphs([leaky, gold_leak], paragraphs, questions)
    assert [g.id for g in filtered] == ["l"] and len(filtered[0].passages) == 1
    check_no_leak(filtered, paragraphs, questions)
    # The cs224n files are refused as a training source outright.
    with pytest.raises(DataLeakError, match="never train on it"):
        squad_groups(limit=1, path="squad/cs224n-dev-v2.0.json")
