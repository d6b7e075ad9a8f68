"""Smoke test of ``benchmarks/parametric_qa.py``: its ``main`` end to end on 2 questions.

Tiny settings (1 distractor, 2 answer tokens, one PRAG question trained for one step, one
conflict case) so it takes well under a minute; it checks the JSON the script writes has every
mode with sane values, not the scores.  The shipped translator and compressor are used; if a
checkout lacks the translator, a freshly initialised one (saved like a trained one) stands in.
The GPU section runs on CPU with toy shapes, so its code is exercised without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "parametric_qa.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("parametric_qa_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(autouse=True)
def one_thread():
    """The script sets torch's thread count (1 by default); restore it for the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory):
    """The shipped translator if it exists, else an untrained one for the embedded SmolLM2."""
    from hyco_rag.dyprag.translator import CONFIG_NAME, DEFAULT_TRANSLATOR_DIR, ParameterTranslator, TranslatorConfig

    if (DEFAULT_TRANSLATOR_DIR / CONFIG_NAME).is_file():
        return None
    from hyco_rag.models import load_causal_lm

    model, _ = load_causal_lm(device="cpu")
    path = tmp_path_factory.mktemp("translator")
    ParameterTranslator(TranslatorConfig.for_model(model)).save_pretrained(path)
    return path


def test_answer_swap_and_kinds(script):
    swapped = script.replace_answer("Denver Broncos beat the Panthers; the Broncos won.", ["Denver Broncos", "Broncos"], "Chicago Bears")
    assert swapped == "Chicago Bears beat the Panthers; the Chicago Bears won."
    # whole words only: "Art" inside "Artists" stays
    assert script.replace_answer("Artists of Art", ["Art"], "Music") == "Artists of Music"
    assert script.answer_type("In what year did it open?", "1936") == "year"
    assert script.answer_type("How many yards was the pass?", "18") == "number"
    assert script.answer_type("When did it happen?", "7th century") == "date"
    assert script.answer_type("Who coached the team?", "John Fox") == "person"
    assert script.answer_type("What Doctor Who episode won?", "The Waters of Mars") == "name"
    assert script.answer_type("What do teachers do?", "spend time with students").startswith("other")
    assert script.question_focus("What nationality was Tesla?") == "nationality"
    assert script.question_focus("What kind of rock is it?") == "rock"
    assert script.question_focus("How many touchdowns were there?") == "how many"


def test_controls_and_compressor_adapter(script):
    def item(i, article):
        return script.Item(f"q{i}", "Q?", ["a"], "text", f"{article}-{i}", [(f"{article}-{i}", "text")], article)

    items = [item(0, "1"), item(1, "1"), item(2, "2"), item(3, "3")]
    perm = script.derangement(items)
    assert all(items[j].article != items[i].article for i, j in enumerate(perm))
    with pytest.raises(ValueError, match="at least 2"):
        script.derangement(items[:1])

    calls = []

    class Fake:
        def compress(self, query, documents, **options):
            calls.append((query, documents, options))
            return "result"

    adapter = script.ReaderBudgetCompressor(Fake(), 0.125, "reader-tokenizer")
    assert adapter.compress("q", ("d1", "d2")) == "result"
    assert calls == [("q", ["d1", "d2"], {"rate": 0.125, "target_tokenizer": "reader-tokenizer"})]


def test_config_rejects_bad_input(script):
    with pytest.raises(ValueError, match="--modes"):
        script.BenchmarkConfig(modes=("rag", "telepathy"))
    with pytest.raises(ValueError, match="left no mode"):
        script.BenchmarkConfig(modes=("prag",), skip_prag=True)
    with pytest.raises(ValueError, match="limit"):
        script.BenchmarkConfig(limit=0)
    assert "prag" not in script.BenchmarkConfig(skip_prag=True).modes


def test_cli_reports_bad_options_as_usage_errors(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--modes", "rag,telepathy"])
    assert exit_info.value.code == 2 and "unknown: ['telepathy']" in capsys.readouterr().err


def test_gpu_section_logic_on_cpu(script):
    """The GPU section's code path, on CPU with toy shapes (this machine may have no GPU)."""
    tiny = dict(hidden=32, intermediate=64, translator_layers=4, heads=4, kv_heads=2, vocab=64, batch=2,
                prefill_tokens=8, decode_tokens=2, passage_counts=(1, 3), dtype=torch.float32)
    rows, status = script.run_gpu_section(script.BenchmarkConfig(gpu_layers=1, quick=True), device="cpu", **tiny)
    assert status == {"run": True, "device": "cpu", "model_layers": 1}
    translate = [r for r in rows if r["measure"].startswith("translate")]
    assert [r["ms_per_passage"] > 0 for r in translate] == [True, True]
    assert all("4 layers" in r["measure"] for r in translate)
    assert translate[1]["ms_per_passage"] == pytest.approx(translate[1]["ms"] / 3)
    forward = [r for r in rows if "ms_hooked" in r]
    assert len(forward) == 2 and all(r["ms"] > 0 and r["ms_hooked"] > 0 for r in forward)
    assert all("1 layers" in r["shape"] for r in forward)
    # Not run: a clear reason, no rows.
    assert script.run_gpu_section(script.BenchmarkConfig(gpu=False)) == ([], {"run": False, "reason": "--no-gpu"})
    if not torch.cuda.is_available():
        rows, status = script.run_gpu_section(script.BenchmarkConfig())
        assert rows == [] and status == {"run": False, "reason": "CUDA is not available on this machine"}


def test_main_end_to_end(script, shared_data, translator_dir, tmp_path, capsys):
    argv = [
        "--limit", "2", "--distractors", "1", "--max-new-tokens", "2", "--prag-limit", "1", "--prag-qa", "none",
        "--conflict-limit", "1", "--no-gpu", "--quick", "--results-dir", str(tmp_path),
        # every code path once: dyprag_shuffled is combine_shuffled's path without context.
        "--modes", "none,rag,prag,prag_combine,dyprag,combine,combine_hyco,combine_shuffled",
    ]
    if translator_dir is not None:
        argv += ["--translator", str(translator_dir)]
    path = script.main(argv)
    assert path.parent == tmp_path and path.is_file()
    payload = json.loads(path.read_text())
    rows = payload["rows"]
    qa = {(r["setting"], r["mode"]): r for r in rows if r["section"] == "qa"}
    expected = {("closed-book", "none"), ("gold", "combine_shuffled")} | {
        (s, m) for s in ("gold", "distractors") for m in ("rag", "prag", "prag_combine", "dyprag", "combine", "combine_hyco")
    }
    assert expected == set(qa), sorted(qa)  # controls run in the gold setting only
    for row in qa.values():
        assert 0 <= row["em"] <= 100 and 0 <= row["f1"] <= 100
        assert row["s_per_q"] > 0 and math.isfinite(row["s_per_q"])
        assert row["n"] == (1 if row["mode"].startswith("prag") else 2)
        assert len(row["predictions"]) == row["n"]
    # The oracle is standard RAG on the gold passage: its share of itself is 100 %.
    assert qa[("gold", "rag")]["f1_vs_oracle"] in (None, pytest.approx(100.0))
    # Passage text: only modes that put it in the prompt pay context tokens.
    for setting in ("gold", "distractors"):
        assert qa[(setting, "rag")]["context_tokens"] > 0
        for mode in ("dyprag", "prag"):
            assert qa[(setting, mode)]["context_tokens"] == 0, mode
        for mode in ("combine", "prag_combine"):
            assert qa[(setting, mode)]["context_tokens"] > 0, mode
        assert qa[(setting, "combine")]["context_tokens"] == qa[(setting, "rag")]["context_tokens"]
        assert qa[(setting, "dyprag")]["translator_ms_per_passage"] > 0
        # Storage: a PRAG LoRA per passage (rank 2, SmolLM2 MLPs, fp32) vs nothing for DyPRAG.
        assert qa[(setting, "prag")]["extra_bytes_per_passage"] == 30 * 3 * 2 * (576 + 1536) * 4
        assert qa[(setting, "dyprag")]["extra_bytes_per_passage"] == 0
        assert qa[(setting, "prag")]["prag_train_s_per_passage"] > 0
        # combine_hyco: the shipped compressor keeps ~25 % of the passages' reader tokens.
        hyco = qa[(setting, "combine_hyco")]
        assert 0 < hyco["context_tokens"] < qa[(setting, "rag")]["context_tokens"]
        assert hyco["compress_s_per_q"] > 0 and hyco["translator_ms_per_passage"] > 0
    assert qa[("gold", "combine_shuffled")]["context_tokens"] == qa[("gold", "rag")]["context_tokens"]
    assert qa[("distractors", "rag")]["context_tokens"] > qa[("gold", "rag")]["context_tokens"]
    assert qa[("distractors", "prag")]["delta_rank"] == 4  # two passages' rank-2 LoRAs, summed
    conflict = [r for r in rows if r["section"] == "conflict"]
    assert {r["mode"] for r in conflict} >= {"none", "rag", "dyprag", "combine", "prag"}
    for row in conflict:
        assert row["n"] == 1
        assert row["follows_passage"] + row["neither"] <= 100 + 1e-9
    case = conflict[0]["predictions"][0]
    assert case["swapped_in"] and case["original"]
    notes = payload["config"]["notes"]
    assert payload["config"]["gpu_section"] == {"run": False, "reason": "--no-gpu"}
    assert "GPU section not run: --no-gpu" in notes
    table = path.with_suffix(".md").read_text()
    assert "| setting | mode |" in table and "| gold | combine_hyco |" in table and "GPU section not run" in table
    out = capsys.readouterr().out
    assert "Knowledge conflict" in out and "results:" in out
