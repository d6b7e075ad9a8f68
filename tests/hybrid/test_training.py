"""The hybrid training loop on a tiny model: caches filled once, losses fall, resume continues."""

from __future__ import annotations

import json

import pytest
import torch

from hyco_rag.hybrid import HybridAdapter
from hyco_rag.hybrid.training.data import QAItem, student_messages
from hyco_rag.hybrid.training.trainer import HybridTrainer, HybridTrainingConfig
from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE

from ..engine.conftest import make_talkative_llama

ITEMS = [
    QAItem(
        "q1",
        "When was the tower completed?",
        ["1889"],
        ["The Eiffel Tower was completed in 1889.", "Paris is in France."],
        "test",
    ),
    QAItem(
        "q2",
        "Who won Super Bowl 50?",
        ["Denver Broncos"],
        ["Denver Broncos won Super Bowl 50.", "It was played in 2016."],
        "test",
    ),
    QAItem("q3", "How many prizes?", ["two"], ["Marie Curie won two Nobel Prizes.", "She was born in Warsaw."], "test"),
]


class FirstWords:
    calls = 0

    def compress(self, query, documents, *, target_tokens, target_tokenizer):
        FirstWords.calls += 1

        class Result:
            texts = [" ".join(d.split()[:2]) for d in documents]

        return Result()


def _trainer(tmp_path, steps, **overrides):
    model, tokenizer = make_talkative_llama()
    config = HybridTrainingConfig(
        steps=steps, batch_size=3, width=32, heads=4, num_soft_tokens=4, checkpoint_every=2, learning_rate=3e-3, **overrides
    )
    items = [QAItem(i.id, i.question, i.answers, i.passages, i.source) for i in ITEMS]
    return HybridTrainer(model, tokenizer, items, FirstWords(), config, output=tmp_path / "out", cache_dir=tmp_path / "cache")


def test_the_student_prompt_puts_the_soft_tokens_first_then_the_kept_text():
    messages = student_messages("Who won?", ["kept words"], SHORT_ANSWER_TEMPLATE, qa=True)
    assert "Document [1]: <<hyco-soft-tokens>>\n\nDocument [2]: kept words" in messages[-1]["content"]
    assert messages[-1]["content"].endswith("Question: Who won?")


def test_training_fills_caches_once_learns_and_resumes(tmp_path):
    torch.set_num_threads(1)
    trainer = _trainer(tmp_path, steps=4, stage_weights=(0.0, 0.0, 1.0))
    trainer.prepare()
    calls = FirstWords.calls
    state_files = sorted(trainer.states.directory.rglob("*.safetensors"))
    assert len(state_files) == 6 + 3 + 2  # passages, questions, the two stage instructions
    assert len(list(trainer.teacher.directory.rglob("*.safetensors"))) == 3
    before = trainer.answer_nll(trainer.items)
    log = trainer.train()
    assert [row["step"] for row in log.rows] == [2, 4] and "instruction_kl" in log.rows[0]
    after = trainer.answer_nll(trainer.items)
    assert after < before  # 4 steps on 3 questions: the answers get likelier
    saved = json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text())
    assert saved["step"] == 4

    # A second trainer over the same folders: nothing recomputed, and it continues at step 4.
    again = _trainer(tmp_path, steps=6, stage_weights=(0.0, 0.0, 1.0))
    again.prepare()
    assert FirstWords.calls == calls  # the kept text came from its cache
    resumed = again.train()
    assert [row["step"] for row in resumed.rows] == [2, 4, 6]
    loaded = HybridAdapter.from_pretrained(tmp_path / "out" / "checkpoint" / "adapter")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), again.adapter.state_dict().values()))


def test_every_stage_runs(tmp_path):
    torch.set_num_threads(1)
    trainer = _trainer(tmp_path, steps=10, stage_weights=(1.0, 1.0, 1.0))
    trainer.prepare()
    log = trainer.train()
    means = {key: value for row in log.rows for key, value in row.items() if key.endswith("_nll")}
    assert set(means) == {"paraphrase_nll", "completion_nll", "instruction_nll"}
    assert all(0 < value < 50 for value in means.values())  # finite, no empty targets


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="stage_weights must be 3"):
        HybridTrainingConfig(stage_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="rate must be in"):
        HybridTrainingConfig(rate=0)


def test_the_shared_prompt_prefix_cache_changes_no_loss(tmp_path):
    torch.set_num_threads(1)
    trainer = _trainer(tmp_path, steps=1)
    trainer.prepare()
    import random

    for stage in ("instruction", "paraphrase", "completion"):
        examples = [trainer._example(stage, random.Random(i)) for i in range(3)]
        soft = trainer.soft_tokens(examples)
        trainer.prefix_cache = False
        plain = trainer.losses(examples, soft)
        trainer.prefix_cache = True
        cached = trainer.losses(examples, soft)
        assert torch.allclose(plain[0], cached[0], atol=1e-4) and torch.allclose(plain[1], cached[1], atol=1e-4)
        (gradient,) = torch.autograd.grad(cached[0], soft)
        assert gradient.abs().sum() > 0  # the soft tokens get their gradient through the cached prefix
    assert len(trainer._prefixes) == 2  # the QA prefix and the pretraining stages' prefix


def test_the_command_trains_and_ships_an_adapter_with_its_report(shared_data, tmp_path):
    """``hyco-rag train hybrid`` end to end on real SQuAD train data, with a tiny model."""
    from hyco_rag.cli import main

    model, tokenizer = make_talkative_llama()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "adapter"
    argv = ["train", "hybrid", "--model", str(tmp_path / "model"), "--output", str(out), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--squad-questions", "4", "--no-multihop", "--heldout-questions", "3", "--steps", "3", "--batch-size", "2"]
    argv += ["--width", "32", "--heads", "4", "--threads", "1"]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "training_report.json", "README.md"}
    report = json.loads((out / "training_report.json").read_text())
    assert report["questions"] == 4 and report["config"]["steps"] == 3 and len(report["log"]) >= 1
    assert set(report["heldout_answer_nll"]) == {"soft", "zero_soft", "shuffled_soft"}
    assert report["command"].startswith("hyco-rag train hybrid")
    HybridAdapter.from_pretrained(out, model=model)  # loads, and matches the model it was trained for
    assert "Held-out answer NLL" in (out / "README.md").read_text()
