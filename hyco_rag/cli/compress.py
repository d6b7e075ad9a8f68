"""`hyco-rag compress`: compress the documents of each JSONL line for its query.

Input lines: ``{"query": str, "documents": [str, ...]}`` (an ``"id"`` is echoed back).
``--ray`` runs the same compression on Ray Data actors (``docs/scaling.md``); with
``--no-timings`` both write the same bytes.
Output lines: ``{"documents": [str, ...], "stats": {...}}``, one per input line, in input
order, each document compressed in place (a passage that falls to nothing becomes ``""``, so
positions still line up). The output file is written atomically: a failed run leaves no
partial file. A malformed line fails the run before any model work, naming its line number.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_requests(path: str | Path) -> list[dict[str, Any]]:
    """Parse and validate every line; errors name the 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()  # trailing newline(s) at the end of the file
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}: line {number} is empty; every line must be a JSON object")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} must be a JSON object with 'query' and 'documents'")
        query = record.get("query")
        documents = record.get("documents")
        if not isinstance(query, str):
            raise ValueError(f"{path}: line {number}: 'query' must be a string, got {type(query).__name__}")
        if not isinstance(documents, list):
            raise ValueError(f"{path}: line {number}: 'documents' must be a list of strings, got {type(documents).__name__}")
        for i, document in enumerate(documents):
            if not isinstance(document, str):
                raise ValueError(f"{path}: line {number}: documents[{i}] must be a string, got {type(document).__name__}")
        requests.append(record)
    return requests


def write_jsonl_atomic(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """One JSON object per line, written atomically: the output is complete or absent."""
    from hyco_rag.results import write_text_atomic

    return write_text_atomic(path, "".join(encode_line(record) for record in records))


def compress_records(
    compressor: Any, records: list[dict[str, Any]], options: dict[str, Any], *, timings: bool = True
) -> list[dict[str, Any]]:
    """Output lines of one batch of input records (what both the plain and the Ray path write).

    ``timings=False`` leaves out ``stats.seconds``, the only field that is not a function of
    the input, so two runs (plain or ``--ray``) write the same bytes.
    """
    results = compressor.compress_batch([r["query"] for r in records], [r["documents"] for r in records], **options)
    lines = []
    for record, result in zip(records, results):
        # Input order, one entry per input document: "" where a passage was dropped.
        texts = [""] * len(record["documents"])
        for passage in result.passages:
            texts[passage.index] = "" if passage.dropped else passage.text
        stats = result.stats if timings else {k: v for k, v in result.stats.items() if k != "seconds"}
        line = {"documents": texts, "stats": stats}
        if "id" in record:
            line = {"id": record["id"], **line}
        lines.append(line)
    return lines


def encode_line(record: dict[str, Any]) -> str:
    """One output line, newline included (the byte format of the output file)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def compress_options(args: argparse.Namespace) -> dict[str, Any]:
    """The budget and counting options of ``compress_batch``, validated before any model loads."""
    budget = {"rate": args.rate, "target_tokens": args.target_tokens, "threshold": args.threshold}
    options: dict[str, Any] = {k: v for k, v in budget.items() if v is not None}
    if args.target_tokenizer:
        options["target_tokenizer"] = args.target_tokenizer
    if args.min_tokens_per_passage:
        options["min_tokens_per_passage"] = args.min_tokens_per_passage
    if args.hops != 1:
        options["hops"] = args.hops
    # Validate the budget before loading the model, so a typo fails in milliseconds.
    from hyco_rag.compression.budget import resolve_budget
    from hyco_rag.compression.chain import validate_hops

    resolve_budget(args.rate, args.target_tokens, args.threshold, 0.5)
    validate_hops(args.hops)
    return options


def report(outputs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    emptied = sum(1 for o in outputs if "warning" in o["stats"])
    if emptied:
        logger.warning(
            "%d of %d lines kept nothing at --threshold %s (see each line's stats.warning); lower it or "
            "use --rate / --target-tokens",
            emptied,
            len(outputs),
            args.threshold,
        )
    total_in = sum(o["stats"]["original_tokens"] for o in outputs)
    total_out = sum(o["stats"]["compressed_tokens"] for o in outputs)
    logger.info("wrote %d lines to %s (%d -> %d tokens)", len(outputs), args.output, total_in, total_out)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):
        from hyco_rag.distributed.data import run_ray

        return run_ray(args)
    import torch
    from tqdm.auto import tqdm

    from hyco_rag.compression import HyCoCompressor

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    requests = read_requests(args.input)
    options = compress_options(args)
    compressor = HyCoCompressor.from_pretrained(args.model, device=args.device)
    outputs: list[dict[str, Any]] = []
    with tqdm(total=len(requests), desc="compressing", unit="line", disable=args.no_progress) as progress:
        for start in range(0, len(requests), args.batch_size):
            block = requests[start : start + args.batch_size]
            outputs.extend(compress_records(compressor, block, options, timings=not getattr(args, "no_timings", False)))
            progress.update(len(block))
    write_jsonl_atomic(args.output, outputs)
    report(outputs, args)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="compress retrieved documents for their queries (JSONL in, JSONL out)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help='JSONL file, one {"query": ..., "documents": [...]} per line')
    parser.add_argument("--output", required=True, help="JSONL file to write (atomically)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=float, help="share of tokens to keep, in (0, 1]")
    budget.add_argument("--target-tokens", type=int, help="token budget per line, over all its documents")
    budget.add_argument("--threshold", type=float, help="keep words whose keep probability is at least this")
    parser.add_argument("--model", default=None, help="compressor folder (save_pretrained); default: shipped weights")
    parser.add_argument("--target-tokenizer", default=None, help="count tokens with this LLM tokenizer (name or folder)")
    parser.add_argument("--min-tokens-per-passage", type=int, default=0, help="per-passage floor")
    parser.add_argument(
        "--hops", type=int, default=1, help="evidence-chain hops for multi-hop questions (one scoring pass each; 1: single pass)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="lines scored together in one batch")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-timings", action="store_true", help="leave out stats.seconds (wall time), so reruns write identical bytes"
    )
    ray = parser.add_argument_group("Ray Data (pip install 'hyco-rag[ray]'; docs/scaling.md)")
    ray.add_argument("--ray", action="store_true", help="compress with Ray Data: map_batches over compressor actors")
    ray.add_argument("--ray-address", default=None, help="attach to this Ray cluster (default: a local Ray on loopback)")
    ray.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray instance (default: all)")
    ray.add_argument("--actors", type=int, default=1, help="compressor actors (each loads the model once)")
    ray.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs reserved per compressor actor")
    ray.add_argument("--actor-gpus", type=float, default=0.0, help="GPUs reserved per compressor actor")
    ray.add_argument(
        "--block-lines", type=int, default=256, help="input lines per block (the unit of resumption; a multiple of --batch-size)"
    )
    ray.add_argument("--max-blocks", type=int, default=None, help="stop after this many new blocks (exit 3); a rerun continues")
    ray.add_argument(
        "--work-dir", default=None, help="where finished blocks are kept until the output is written (default: OUTPUT.blocks)"
    )
    parser.set_defaults(handler=run)
