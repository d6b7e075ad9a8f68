"""HyCo compressor throughput against the raw MiniLM forward it is built on, side by side.

Issue #3's targets: >= 10k tokens/s on 2 CPU cores (where the raw MiniLM forward does about
5k) and >= 4M tokens/s on an H100. Absolute CPU numbers depend on the machine and its load,
so every configuration also reports its ratio to the raw forward measured in the same run on
the same documents: that ratio is what the compressor's design (early exit, one pass per
chunk) buys, and it carries over between machines.

Documents: SQuAD v1.1 dev questions with 10 passages each (gold + 9 same-article
distractors), as in ``benchmarks/compression_qa.py``. Tokens are context tokens counted with
the encoder's tokenizer (the query is not counted), so the raw forward and HyCo are measured in
the same unit.

- ``raw MiniLM forward``: every (passage, query) pair through all 6 layers, 256-token chunks,
  batches of ``--batch-tokens`` padded tokens, nothing else (no tokenization in the clock
  either: the lower bound of any cross-encoding compressor on this backbone).
- ``HyCo per request``: ``compress()`` once per question, the end-to-end cost of one call
  (tokenization, scoring, budget selection, text assembly).
- ``HyCo batched``: one ``compress_batch()`` over all questions (what a server batching
  concurrent requests sees).

    python benchmarks/compressor_throughput.py                 # CPU, 1 and 2 threads
    python benchmarks/compressor_throughput.py --questions 400 # on a GPU: bf16, large batches
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from hyco_rag.results import format_table, write_results  # noqa: E402

logger = logging.getLogger("compressor_throughput")


def best_of(repeats: int, function: Callable[[], object]) -> float:
    """Fastest of ``repeats`` timed calls (after one warm-up call): load spikes only slow runs down."""
    function()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def raw_forward_batches(compressor, questions: Sequence[str], documents: Sequence[Sequence[str]], batch_tokens: int) -> list[dict]:
    """(passage, query) pairs tokenized once, sorted by length and packed into padded batches."""
    tokenizer = compressor.tokenizer
    max_length = compressor.config.max_length
    pairs = [(doc, q) for q, docs in zip(questions, documents) for doc in docs]
    encoded = tokenizer([p for p, _ in pairs], [q for _, q in pairs], truncation="only_first", max_length=max_length)
    order = sorted(range(len(pairs)), key=lambda i: len(encoded["input_ids"][i]))
    batches, current = [], []
    for i in order:
        length = len(encoded["input_ids"][i])
        if current and length * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    device = compressor.device
    out = []
    for rows in batches:
        features = tokenizer.pad({k: [encoded[k][i] for i in rows] for k in encoded}, return_tensors="pt")
        out.append({k: v.to(device) for k, v in features.items()})
    return out


def context_tokens(compressor, documents: Sequence[Sequence[str]]) -> int:
    return sum(len(ids) for docs in documents for ids in compressor.tokenizer(list(docs), add_special_tokens=False)["input_ids"])


def measure(compressor, questions, documents, *, rate: float, repeats: int, batch_tokens: int, per_request: bool) -> dict[str, float]:
    tokens = context_tokens(compressor, documents)
    backbone = compressor.model.backbone
    batches = raw_forward_batches(compressor, questions, documents, batch_tokens)

    def raw() -> None:
        with torch.inference_mode():
            for batch in batches:
                backbone(**batch)

    results = {"context_tokens": tokens, "raw_forward": tokens / best_of(repeats, raw)}
    results["hyco_batched"] = tokens / best_of(repeats, lambda: compressor.compress_batch(list(questions), [list(d) for d in documents], rate=rate))
    if per_request:
        def one_by_one() -> None:
            for q, docs in zip(questions, documents):
                compressor.compress(q, list(docs), rate=rate)

        results["hyco_per_request"] = tokens / best_of(repeats, one_by_one)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--questions", type=int, default=40, help="SQuAD v1.1 dev questions (10 passages each)")
    parser.add_argument("--threads", default="1,2", help="CPU torch thread counts to measure")
    parser.add_argument("--rates", default="0.125,0.5", help="kept shares (early exit pays most at tight budgets)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (the fastest is kept)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per raw-forward batch (default: the compressor's max_batch_tokens)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--compressor", default=None, help="HyCo weights folder (default: the shipped weights)")
    parser.add_argument("--results-dir", default="benchmarks/results", help="where the JSON goes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from hyco_rag.compression import HyCoCompressor
    from hyco_rag.evaluation.qa_eval import document_texts, load_examples

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    compressor = HyCoCompressor.from_pretrained(args.compressor, device=device)
    examples = load_examples("squad", args.questions, seed=0)
    questions = [e.question for e in examples]
    documents = [document_texts(e, False) for e in examples]
    batch_tokens = args.batch_tokens or compressor.max_batch_tokens
    rates = [float(r) for r in args.rates.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]

    rows = []
    previous = torch.get_num_threads()
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for rate in rates:
                logger.info("measuring %s, %d threads, rate %.3f", device, threads, rate)
                r = measure(compressor, questions, documents, rate=rate, repeats=args.repeats, batch_tokens=batch_tokens,
                            per_request=device.type == "cpu")
                for method, key in (("raw MiniLM forward", "raw_forward"), ("HyCo per request", "hyco_per_request"),
                                    ("HyCo batched", "hyco_batched")):
                    if key not in r:
                        continue
                    rows.append({
                        "device": f"{device.type} ({str(compressor.dtype).removeprefix('torch.')})",
                        "threads": threads if device.type == "cpu" else None,
                        "rate": "-" if key == "raw_forward" else f"{rate:g}",
                        "method": method,
                        "tokens/s": round(r[key]),
                        "x raw forward": round(r[key] / r["raw_forward"], 2),
                        "context tokens": r["context_tokens"],
                    })
    finally:
        torch.set_num_threads(previous)
    # the raw forward does not depend on the rate: keep its first measurement per thread count
    seen, table = set(), []
    for row in rows:
        key = (row["device"], row["threads"], row["method"], row["rate"])
        if key not in seen:
            seen.add(key)
            table.append(row)
    print(format_table(table))
    if not args.no_write:
        config = {"questions": args.questions, "passages_per_question": 10, "rates": rates, "repeats": args.repeats,
                  "batch_tokens": batch_tokens, "device": str(device), "compressor": args.compressor or "shipped",
                  "load_average": os.getloadavg()}
        print("results:", write_results("compressor_throughput", table, config=config, results_dir=args.results_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
