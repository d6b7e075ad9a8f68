"""LongLLMLingua peer: compress QA contexts with ``llmlingua==0.2.2`` and SmolLM2 as its small LM.

Runs inside the peer venv built by ``scripts/peers/setup_llmlingua.sh`` (transformers 4.44.2),
never inside hyco-rag's environment, so it imports nothing from hyco_rag. The benchmark
(``hyco_rag.evaluation.llmlingua``) starts it as a subprocess.

Input JSONL, one record a line::

    {"key": str, "query": str, "documents": [str, ...], "target_tokens": int}   (or "rate": float)

Output JSONL (appended and flushed per record, so an interrupted run resumes: records whose key
is already in the output are skipped)::

    {"key": str, "documents": [str, ...], "compressed_prompt": str,
     "origin_tokens": int, "compressed_tokens": int, "seconds": float}
    or {"key": str, "error": "..."} when llmlingua raised on that record.

Settings are LongLLMLingua's recommended ones from the llmlingua README (question-aware coarse
ranking with ``rank_method="longllmlingua"``, ``condition_in_question="after_condition"``,
``reorder_context="sort"``, ``dynamic_context_compression_ratio=0.3``, ``condition_compare=True``,
``context_budget="+100"``), with the question not concatenated to the output so the reader
gets the compressed documents in the same prompt template as every other method.

tiktoken: llmlingua loads ``cl100k_base`` at start-up (a download). We replace
``tiktoken.get_encoding`` / ``encoding_for_model`` with an encoding backed by the SmolLM2
tokenizer, which is also the reader's: llmlingua's own token counts are then reader tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


class _TokenizerEncoding:
    """The part of ``tiktoken.Encoding`` that llmlingua uses, backed by an HF tokenizer."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.name = "hyco-rag-smollm2"

    def encode(self, text: str, *args, **kwargs) -> list[int]:
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens, *args, **kwargs) -> str:
        return self._tokenizer.decode(list(tokens))


def _patch_tiktoken(model_dir: str) -> None:
    import tiktoken
    from transformers import AutoTokenizer

    encoding = _TokenizerEncoding(AutoTokenizer.from_pretrained(model_dir))
    tiktoken.get_encoding = lambda *args, **kwargs: encoding
    tiktoken.encoding_for_model = lambda *args, **kwargs: encoding


def _memoize_ranking(compressor_class) -> None:
    """Reuse LongLLMLingua's coarse ranking across budgets for the same question.

    ``get_rank_results`` (a SmolLM2 forward per document) depends on the documents and the
    question only, not on the budget, so a rate sweep would recompute it identically for every
    rate. We cache it by its inputs; outputs are unchanged. To keep timings honest, a cache hit
    is charged the seconds the ranking took when it was computed (``ranking_seconds_charged`` in the output).
    """
    original = compressor_class.get_rank_results
    cache: dict = {}
    state = {"charged": 0.0}

    def get_rank_results(self, context, question, rank_method, condition_in_question, context_tokens_length):
        key = (tuple(context), question, rank_method, condition_in_question, tuple(context_tokens_length))
        if key not in cache:
            tick = time.perf_counter()
            result = original(self, context, question, rank_method, condition_in_question, context_tokens_length)
            cache.clear()  # requests arrive grouped by question: one entry is enough
            cache[key] = (list(result), time.perf_counter() - tick)
        else:
            state["charged"] += cache[key][1]
        return list(cache[key][0])

    compressor_class.get_rank_results = get_rank_results
    compressor_class._hyco_charged = state


def _split_documents(compressed: str) -> list[str]:
    """llmlingua joins contexts with blank lines; split its output back into documents."""
    return [piece.strip() for piece in compressed.split("\n\n") if piece.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SmolLM2 folder prepared for transformers 4.44")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, args.threads))
    _patch_tiktoken(args.model)
    from llmlingua import PromptCompressor

    _memoize_ranking(PromptCompressor)

    done: set[str] = set()
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as stream:
            for line in stream:
                line = line.strip()
                if line:
                    record = json.loads(line)
                    if "error" not in record:
                        done.add(record["key"])
    with open(args.input, encoding="utf-8") as stream:
        records = [json.loads(line) for line in stream if line.strip()]
    todo = [r for r in records if r["key"] not in done]
    print(f"[llmlingua] {len(records)} records, {len(records) - len(todo)} cached, {len(todo)} to run", file=sys.stderr, flush=True)
    if not todo:
        return 0

    started = time.perf_counter()
    compressor = PromptCompressor(model_name=args.model, device_map=args.device)
    print(f"[llmlingua] model loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)

    with open(args.output, "a", encoding="utf-8") as out:
        for n, record in enumerate(todo, 1):
            documents = [d for d in record["documents"] if d and d.strip()]
            budget = {"target_token": record["target_tokens"]} if "target_tokens" in record else {"rate": record["rate"]}
            tick = time.perf_counter()
            PromptCompressor._hyco_charged["charged"] = 0.0
            try:
                if documents:
                    result = compressor.compress_prompt(
                        documents,
                        question=record["query"],
                        condition_in_question="after_condition",
                        reorder_context="sort",
                        dynamic_context_compression_ratio=0.3,
                        condition_compare=True,
                        context_budget="+100",
                        rank_method="longllmlingua",
                        concate_question=False,
                        **budget,
                    )
                else:
                    result = {"compressed_prompt": "", "origin_tokens": 0, "compressed_tokens": 0}
                line = {
                    "key": record["key"],
                    "documents": _split_documents(result["compressed_prompt"]),
                    "compressed_prompt": result["compressed_prompt"],
                    "origin_tokens": int(result["origin_tokens"]),
                    "compressed_tokens": int(result["compressed_tokens"]),
                    "seconds": time.perf_counter() - tick + PromptCompressor._hyco_charged["charged"],
                    "ranking_seconds_charged": PromptCompressor._hyco_charged["charged"],
                }
            except Exception as error:  # recorded per record; the client decides what to do
                line = {"key": record["key"], "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            if n % 10 == 0 or n == len(todo):
                rate = (time.perf_counter() - started) / n
                print(f"[llmlingua] {n}/{len(todo)} ({rate:.2f}s/record)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
