"""``hyco-rag compress --ray`` vs the plain ``hyco-rag compress`` on one corpus (issue 15).

The corpus: ``--documents`` passages of the demo corpus (cycled), ``--per-line`` per JSONL line,
each line with its demo question.  Both runs use the CLI entry point itself (``hyco_rag.cli.main``)
with the shipped compressor, the same ``--rate`` and ``--batch-size`` and ``--no-timings``, so
their outputs must be byte-identical (checked).  Reported: wall seconds, input tokens per
second (``stats.original_tokens`` summed), and Ray's start-up included (what a user waits for).

    python benchmarks/compress_ray.py                          # 10,000 documents, 2 actors on 2 CPUs
    python benchmarks/compress_ray.py --documents 400 --actors 1   # a minute

Writes ``benchmarks/results/compress_ray-<UTC timestamp>.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hyco_rag.results import RESULTS_DIR, environment, format_table, write_json_atomic  # noqa: E402

logger = logging.getLogger("compress_ray")


def build_corpus(path: Path, documents: int, per_line: int) -> int:
    """Write the JSONL corpus; returns its line count."""
    from hyco_rag.data import load_demo_corpus, load_demo_questions

    corpus = load_demo_corpus()
    questions = load_demo_questions()
    lines = []
    for start in range(0, documents, per_line):
        docs = [corpus[(start + j) % len(corpus)].text for j in range(min(per_line, documents - start))]
        question = questions[(start // per_line) % len(questions)].question
        lines.append(json.dumps({"id": f"l{len(lines)}", "query": question, "documents": docs}, ensure_ascii=False) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def timed_run(argv: list[str]) -> float:
    from hyco_rag.cli import main as cli

    start = time.perf_counter()
    code = cli(argv)
    if code != 0:
        raise RuntimeError(f"hyco-rag {' '.join(argv)} exited with {code}")
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--per-line", type=int, default=4, help="documents per JSONL line")
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the plain run and of each actor")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--actor-cpus", type=float, default=1.0)
    parser.add_argument("--ray-cpus", type=float, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--block-lines", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/compress_ray-<UTC>.json)")
    args = parser.parse_args(argv)
    if args.documents < 1 or args.per_line < 1:
        raise ValueError("--documents and --per-line must be >= 1")
    env = environment()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="compress_ray-") as folder:
        work = Path(folder)
        source = work / "corpus.jsonl"
        lines = build_corpus(source, args.documents, args.per_line)
        common = ["--input", str(source), "--rate", str(args.rate), "--batch-size", str(args.batch_size)]
        common += ["--device", args.device, "--threads", str(args.threads), "--no-progress", "--no-timings"]
        plain_out, ray_out = work / "plain.jsonl", work / "ray.jsonl"
        logger.info("plain: %d documents in %d lines", args.documents, lines)
        plain_s = timed_run(["compress", *common, "--output", str(plain_out)])
        ray_args = ["--ray", "--actors", str(args.actors), "--actor-cpus", str(args.actor_cpus)]
        ray_args += ["--block-lines", str(args.block_lines)]
        if args.ray_cpus is not None:
            ray_args += ["--num-cpus", str(args.ray_cpus)]
        logger.info("ray: %d actors", args.actors)
        ray_s = timed_run(["compress", *common, *ray_args, "--output", str(ray_out)])
        identical = plain_out.read_bytes() == ray_out.read_bytes()
        stats = [json.loads(line)["stats"] for line in plain_out.read_text(encoding="utf-8").splitlines()]
    tokens_in = sum(s["original_tokens"] for s in stats)
    tokens_out = sum(s["compressed_tokens"] for s in stats)
    rows: list[dict[str, Any]] = [
        {"run": "plain", "seconds": plain_s, "tokens/s": tokens_in / plain_s, "documents/s": args.documents / plain_s},
        {
            "run": f"ray ({args.actors} actors)",
            "seconds": ray_s,
            "tokens/s": tokens_in / ray_s,
            "documents/s": args.documents / ray_s,
        },
    ]
    now = _dt.datetime.now(_dt.timezone.utc)
    payload = {
        "benchmark": "compress_ray",
        "created": now.isoformat(timespec="seconds"),
        "config": {**vars(args), "lines": lines, "argv": list(argv) if argv is not None else sys.argv[1:]},
        "environment": {**env, "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "rows": rows,
        "speedup": plain_s / ray_s,
        "byte_identical": identical,
    }
    out = Path(args.out) if args.out else RESULTS_DIR / f"compress_ray-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json_atomic(out, payload)
    print(format_table(rows, ["run", "seconds", "tokens/s", "documents/s"]))
    print(f"{tokens_in} input tokens; ray x{payload['speedup']:.2f} of plain; byte-identical: {identical}; wrote {out}")
    return 0 if identical else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
