"""Fuzz the HyCo compressor: >= 10,000 generated requests, every invariant checked, JSON out.

Each case is a seeded random request (:func:`hyco_rag.compression.invariants.random_case`:
multi-script prose, CJK/Thai/Korean, RTL, emoji sequences, zero-width characters, code, JSON,
URLs, tables, empty documents; rate / target_tokens / threshold / default budgets, force
tokens, floors, reorder, drop_empty) checked with
:func:`hyco_rag.compression.invariants.check_result` (in-order subsequence of the input units,
budget in the target tokenizer, protected spans whole, UTF-8 and no fused words, stats equal
the re-count), in the encoder's tokenizer and in SmolLM2's (BPE). Crashes are any exception
other than the one documented refusal (a floor or reserved units the budget cannot hold).

Most cases use a tiny random-weights encoder (4 layers, 32 wide: the same code path, fast);
``--shipped-share`` of them run on the shipped weights (MiniLM backbone). The JSON says which.

    .venv/bin/python benchmarks/fuzz_compressor.py --cases 10000 --shipped-share 0.1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_compressor(seed: int = 0):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hyco_rag.compression import CompressorConfig, HyCoCompressor
    from hyco_rag.compression.model import HyCoScorer
    from hyco_rag.models import resolve_sentence_encoder

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_sentence_encoder())
    tokenizer.model_max_length = 1 << 30
    backbone = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                    num_attention_heads=2, intermediate_size=64))
    config = CompressorConfig(exit_layer=2, head_hidden=16)
    return HyCoCompressor.from_scorer(config, HyCoScorer(config, backbone), tokenizer, device="cpu", dtype=torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--shipped-share", type=float, default=0.1, help="share of cases run on the shipped weights")
    parser.add_argument("--reader-share", type=float, default=0.5, help="share counted in SmolLM2's tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("--max-examples", type=int, default=20, help="failing cases kept in the JSON")
    args = parser.parse_args(argv)
    if args.cases < 1 or not 0 <= args.shipped_share <= 1 or not 0 <= args.reader_share <= 1:
        parser.error("--cases must be >= 1 and the shares in [0, 1]")

    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("hyco_rag").setLevel(logging.ERROR)  # threshold / force-token notices, by the thousand
    from hyco_rag.compression import HyCoCompressor
    from hyco_rag.compression.budget import BudgetError
    from hyco_rag.compression.invariants import check_result, random_case
    from hyco_rag.models import load_tokenizer

    models = {"tiny-random": tiny_compressor(args.seed),
              "shipped": HyCoCompressor.from_pretrained(None, device="cpu", dtype=torch.float32)}
    reader = load_tokenizer()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    tally: dict[str, Counter] = {name: Counter() for name in models}
    violations: Counter = Counter()
    examples: list[dict] = []
    for case_index in range(args.cases):
        case = random_case(rng)
        model_name = "shipped" if rng.random() < args.shipped_share else "tiny-random"
        compressor = models[model_name]
        use_reader = rng.random() < args.reader_share
        tokenizer = reader if use_reader else compressor.tokenizer
        options = dict(case["options"])
        extra = {"target_tokenizer": reader} if use_reader else {}
        counts = tally[model_name]
        counts["cases"] += 1
        counts["reader_tokenizer" if use_reader else "encoder_tokenizer"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = compressor.compress(case["query"], case["documents"], **options, **extra)
        except BudgetError:
            counts["refused_reserved_over_budget"] += 1
            continue
        except ValueError as error:
            if "min_tokens_per_passage" in str(error):
                counts["refused_floor_over_budget"] += 1
                continue
            counts["crashes"] += 1
            problems = [f"crash: {type(error).__name__}: {error}"]
        except Exception as error:  # noqa: BLE001 - a fuzzer counts every crash
            counts["crashes"] += 1
            problems = [f"crash: {type(error).__name__}: {error}", traceback.format_exc(limit=3)]
        else:
            def count(text: str, tokenizer=tokenizer) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

            problems = check_result(case["documents"], options, result, count,
                                    default_rate=compressor.config.default_rate)
            counts["checked"] += 1
            counts["tokens_in"] += result.stats["original_tokens"]
            counts["tokens_out"] += result.stats["compressed_tokens"]
        if problems:
            counts["violating_cases"] += 1
            for problem in problems:
                violations[problem.split(":", 1)[0]] += 1
            if len(examples) < args.max_examples:
                examples.append({"case": case_index, "model": model_name, "reader_tokenizer": use_reader,
                                 "query": case["query"], "documents": case["documents"], "options": options,
                                 "problems": problems[:5]})
        if (case_index + 1) % 1000 == 0:
            print(f"{case_index + 1} cases, {sum(c['violating_cases'] for c in tally.values())} violating, "
                  f"{sum(c['crashes'] for c in tally.values())} crashes, {time.perf_counter() - started:.0f} s",
                  flush=True)
    elapsed = time.perf_counter() - started
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "benchmark": "fuzz_compressor",
        "command": "python benchmarks/fuzz_compressor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cases": args.cases,
        "seed": args.seed,
        "models": {"tiny-random": "4-layer 32-wide random BertModel + random heads (MiniLM tokenizer), same code path",
                   "shipped": "hyco_rag/resources/compressor (all-MiniLM-L6-v2 backbone + trained heads)"},
        "per_model": {name: dict(counts) for name, counts in tally.items()},
        "tokenizers": {"encoder": "the model's own (MiniLM WordPiece)", "reader": "SmolLM2-135M-Instruct (BPE)"},
        "invariants": ["order (in-order subsequence of input units)", "budget (target tokenizer)",
                       "protected spans whole", "utf8", "fused (no glued words)", "stats equal the re-count",
                       "0 crashes"],
        "violations": dict(violations),
        "crashes": sum(c["crashes"] for c in tally.values()),
        "violating_cases": sum(c["violating_cases"] for c in tally.values()),
        "seconds": round(elapsed, 1),
        "threads": args.threads,
        "examples": examples,
    }
    from hyco_rag.results import write_json_atomic

    path = write_json_atomic(Path(args.results_dir) / f"fuzz_compressor-{stamp}.json", report)
    print(json.dumps({k: report[k] for k in ("cases", "per_model", "violations", "crashes", "violating_cases", "seconds")},
                     indent=1))
    print(f"wrote {path}")
    return 0 if report["violating_cases"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
