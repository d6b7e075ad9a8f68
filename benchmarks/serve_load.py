"""Load test of the OpenAI-compatible server: concurrent clients on loopback against one engine.

The server (``hyco_rag.server.create_app`` under uvicorn) runs in this process on a free
loopback port; async ``httpx`` clients send ``POST /v1/chat/completions`` over real HTTP.

* Two request shapes, each request with its own documents (distinct demo-corpus passages):
  ``rag`` (RAG-typical: 3 passages, a question, ``max_tokens`` 24: prefill-bound) and
  ``decode`` (1 passage, "Write a detailed summary of the document.", ``max_tokens`` 128:
  decode-bound).  Modes ``rag`` and ``combine`` (passages in the prompt + their DyPRAG deltas).
* For every shape x mode the same requests run one at a time (concurrency 1: the baseline and
  the reference answers) and then with 4, 8 and 16 concurrent clients.  Reported: completion
  tokens/s, p50/p99 latency, time to first token, mean batch size (rows per decode step, from
  the engine's stats), ``ratio`` = tokens/s / one-at-a-time tokens/s, and ``mismatches``: greedy
  answers that differ from the one-at-a-time answer (cross-talk, or batched floating point).
* The throughput engine has its delta cache off, so every combine request encodes and
  translates its own passages (distinct deltas); the cache is measured separately: passages
  sent twice, hit rate read from ``/metrics``.
* Overload: more concurrent requests than ``max_queue + max_batch_size`` of a small engine;
  every request must end with a 200, 429 or 503 within its timeout (none lost, none hung).

    python benchmarks/serve_load.py                  # SmolLM2-135M, 1 torch thread, ~10-15 min on 2 cores
    python benchmarks/serve_load.py --quick          # a minute: concurrency 1 and 4, 4 requests, short answers
    python benchmarks/serve_load.py --device cuda --model <8B-shaped folder> --translator random
    python benchmarks/serve_load.py --target ray --ray-replicas 1,2 --modes rag --shapes rag --skip-cache --skip-overload

``--target ray`` (needs ``hyco-rag[ray]``) also runs the same levels through Ray Serve
(:mod:`hyco_rag.distributed.serve`: the same app as the ingress, each generator replica an
engine like the single-process one) with 1 and 2 generator replicas on a local Ray bounded to
``--ray-cpus``, in the same run; rows carry ``target`` (``single``, ``ray-1``, ``ray-2``) and
``vs_single`` (tokens/s over the single-process row).  Target: ``ray-1`` within 15% of
``single`` (``ray_targets``).

Writes ``benchmarks/results/serve_load-<UTC timestamp>.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from hyco_rag.results import RESULTS_DIR, environment, format_table, write_json_atomic  # noqa: E402

logger = logging.getLogger("serve_load")

SUMMARY_PROMPT = "Write a detailed summary of the document."
#: (shape, mode, concurrency) -> least ratio to one-at-a-time throughput (issue 11, 2-core CPU).
TARGETS = {("decode", "combine", 8): 3.0, ("decode", "combine", 16): 4.0, ("rag", "combine", 8): 1.5}


@dataclass
class Shape:
    name: str
    passages: int
    max_tokens: int


@dataclass
class Result:
    status: int
    latency_s: float
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    first_token_s: float | None = None
    translate_s: float | None = None
    error: str | None = None


@dataclass
class Workload:
    shape: Shape
    requests: list[dict[str, Any]] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; ``None`` without values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def build_workloads(shapes: Sequence[Shape], count: int) -> list[Workload]:
    """``count`` requests per shape, each with passages no other request of the shape uses."""
    from hyco_rag.data import load_demo_corpus, load_demo_questions

    corpus = load_demo_corpus()
    by_id = {p.id: p for p in corpus}
    questions = [q for q in load_demo_questions() if q.passage_id in by_id]
    workloads = []
    for shape in shapes:
        need = shape.passages * count
        if need > len(corpus):
            raise ValueError(
                f"{count} requests of {shape.passages} passages need {need} distinct passages; the demo corpus has {len(corpus)}"
            )
        workload = Workload(shape)
        if shape.name == "decode":
            for i in range(count):
                workload.requests.append({"question": SUMMARY_PROMPT, "documents": [corpus[i].text]})
        else:
            used: set[str] = set()
            pool = iter(p for p in corpus)
            for i in range(count):
                if i < len(questions):
                    gold = by_id[questions[i].passage_id]
                    docs, question = [gold], questions[i].question
                    used.add(gold.id)
                else:
                    docs, question = [], None
                while len(docs) < shape.passages:
                    passage = next(pool)
                    if passage.id not in used and all(passage.id != d.id for d in docs):
                        if any(q.passage_id == passage.id for q in questions):
                            continue  # a later request's gold passage
                        docs.append(passage)
                        used.add(passage.id)
                question = question or f"What does the first document say about {docs[0].title}?"
                workload.requests.append({"question": question, "documents": [d.text for d in docs]})
        workloads.append(workload)
    return workloads


def chat_body(request: dict[str, Any], mode: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": request["question"]}],
        "documents": request["documents"],
        "hyco": {"mode": mode},
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def send(client: Any, body: dict[str, Any]) -> Result:
    import httpx

    start = time.perf_counter()
    try:
        response = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as error:
        return Result(-1, time.perf_counter() - start, error=f"{type(error).__name__}: {error}")
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return Result(response.status_code, latency, error=response.text[:200])
    data = response.json()
    timings = data.get("hyco", {}).get("timings", {})
    return Result(
        200,
        latency,
        text=data["choices"][0]["message"]["content"],
        completion_tokens=data["usage"]["completion_tokens"],
        prompt_tokens=data["usage"]["prompt_tokens"],
        first_token_s=timings.get("first_token"),
        translate_s=timings.get("translate"),
    )


async def run_level(
    base_url: str, bodies: Sequence[dict[str, Any]], concurrency: int, timeout_s: float
) -> tuple[list[Result], float]:
    """``bodies`` through ``concurrency`` closed-loop clients; (results in input order, wall seconds)."""
    import httpx

    results: list[Result | None] = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[i] = await send(client, bodies[i])

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout_s * len(bodies))
        wall = time.perf_counter() - start
    return [r for r in results if r is not None], wall


def level_row(
    shape: str,
    mode: str,
    concurrency: int,
    results: list[Result],
    wall: float,
    cpu: float,
    stats: tuple[int, int],
    reference: dict[int, str],
) -> dict[str, Any]:
    """One table row; ``reference`` maps request index -> the answer it got at the lowest
    concurrency that ran it (one at a time where it ran one at a time)."""
    ok = [r for r in results if r.status == 200]
    tokens = sum(r.completion_tokens for r in ok)
    steps, rows = stats
    checked = [i for i, r in enumerate(results) if r.status == 200 and i in reference]
    return {
        "shape": shape,
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "completion_tokens": tokens,
        "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "seconds": wall,
        "cpu_seconds": cpu,
        "tokens/s": tokens / wall if wall > 0 else 0.0,
        "tokens/cpu_s": tokens / cpu if cpu > 0 else 0.0,
        "requests/s": len(ok) / wall if wall > 0 else 0.0,
        "p50_s": percentile([r.latency_s for r in ok], 0.5),
        "p99_s": percentile([r.latency_s for r in ok], 0.99),
        "ttft_p50_s": percentile([r.first_token_s for r in ok if r.first_token_s is not None], 0.5),
        "translate_mean_s": statistics.mean([r.translate_s for r in ok if r.translate_s is not None])
        if any(r.translate_s is not None for r in ok)
        else None,
        "mean_batch": rows / steps if steps else 0.0,
        "checked": len(checked),
        "mismatches": sum(1 for i in checked if results[i].text != reference[i]),
        "errors": sorted({r.error for r in results if r.error})[:3],
    }


#: Llama-3-8B's trunk (hidden 4096, MLP 14336, 32 layers, GQA 32/8), random weights, with the
#: SmolLM2 vocabulary so the SmolLM2 tokenizer can read and write its tokens.
LLAMA_8B_SHAPE = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
}


def random_llama(shape: dict[str, int], device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A random-weights Llama of ``shape`` on ``device`` in ``dtype`` (SmolLM2 tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.models import load_tokenizer

    tokenizer = load_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **shape,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model, tokenizer


def load_parts(args: argparse.Namespace) -> tuple[Any, Any, Any, str, str]:
    """(model, tokenizer, translator, model name, which translator) for the benchmark's engines."""
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig
    from hyco_rag.engine.registry import load_engine_parts
    from hyco_rag.models import load_causal_lm

    translator = None
    name = str(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
    if args.translator == "random":
        model, tokenizer = load_causal_lm(args.model, device=args.device)
        source = "random"
    else:
        try:
            parts = load_engine_parts(args.model, args.translator, args.device)
            model, tokenizer, translator, name = parts.model, parts.tokenizer, parts.translator, parts.name
            source = args.translator or "shipped"
        except Exception as error:  # the shipped translator may be mid-retraining: a random one costs the same
            if args.translator is not None:
                raise
            logger.warning("the shipped translator did not load (%s); using a random one (same cost)", error)
            model, tokenizer = load_causal_lm(args.model, device=args.device)
            source = f"random (shipped failed: {type(error).__name__})"
    if translator is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            translator = ParameterTranslator(TranslatorConfig.for_model(model))
        if source == "shipped":
            source = "random (none shipped)"
    return model, tokenizer, translator, name, source


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def main(argv: Sequence[str] | None = None, *, engine: Any = None) -> int:
    """Run the benchmark; ``engine`` (tests) serves its model instead of loading one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="served model (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--translator", default=None, help="translator folder, 'random', or None = the shipped one (random if it fails to load)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--concurrency",
        default="1,4,8,16",
        help="comma-separated client counts, run in this order after one at a time (1); with --budget-s the last ones may be skipped",
    )
    parser.add_argument("--modes", default="combine,rag", help="in the order they run")
    parser.add_argument(
        "--shapes",
        default="decode,rag",
        help="decode (1 passage, 128 tokens) and/or rag (3 passages, 24 tokens), in the order they run",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per concurrent level (default: --waves x its concurrency)",
    )
    parser.add_argument(
        "--waves",
        type=int,
        default=1,
        help="closed-loop rounds per level: each client sends this many requests one after another, so the "
        "ramp-up and the drain (the last, longest answers decoding in a small batch) weigh less",
    )
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=None,
        help="requests run one at a time (default: as many as the largest level; fewer saves time but compares different requests)",
    )
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--rag-tokens", type=int, default=24)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--request-timeout", type=float, default=600.0, help="client timeout per request (s)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="start no new level after this many seconds (skipped levels are listed)"
    )
    parser.add_argument(
        "--gpu-8b-shape", action="store_true", help="serve a random-weights Llama-3-8B-shaped model in bf16 on CUDA"
    )
    parser.add_argument("--target", default="single", choices=("single", "ray"), help="also measure Ray Serve replicas")
    parser.add_argument("--ray-replicas", default="1,2", help="generator replica counts for --target ray")
    parser.add_argument("--ray-cpus", type=float, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--quick", action="store_true", help="concurrency 1,4; 4 requests; 16/8 tokens; small overload check")
    parser.add_argument("--skip-overload", action="store_true", help="no overload check")
    parser.add_argument("--skip-cache", action="store_true", help="no delta-cache check")
    parser.add_argument(
        "--out", default=None, help="JSON file (or folder) to write (default: benchmarks/results/serve_load-<UTC>.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.decode_tokens, args.rag_tokens = "1,4", min(args.decode_tokens, 16), min(args.rag_tokens, 8)
        args.requests = args.requests or 4
    if args.gpu_8b_shape:
        if not torch.cuda.is_available():
            raise SystemExit("serve_load.py --gpu-8b-shape needs a CUDA GPU (torch.cuda.is_available() is False)")
        args.device = "cuda"
        args.max_batch_size = max(args.max_batch_size, 32)
    given = [int(c) for c in args.concurrency.split(",") if c.strip()]
    levels = [1, *dict.fromkeys(c for c in given if c != 1)]  # one at a time first, then in the given order
    if min(levels) < 1:
        raise ValueError("--concurrency values must be >= 1")
    if args.waves < 1:
        raise ValueError("--waves must be >= 1")
    per_level = {level: args.requests or args.waves * level for level in levels if level > 1}
    per_level[1] = args.baseline_requests or args.requests or max(levels)  # the same requests as the largest level
    count = max(per_level.values())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    shapes = [
        {"decode": Shape("decode", 1, args.decode_tokens), "rag": Shape("rag", 3, args.rag_tokens)}[s.strip()]
        for s in args.shapes.split(",")
        if s.strip()
    ]
    from hyco_rag.engine import Engine, EngineConfig, Mode
    from hyco_rag.server import BackgroundServer, create_app

    for mode in modes:
        Mode.parse(mode)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = load_average()
    env = environment()  # while the benchmark's thread count is set
    skipped: list[dict[str, Any]] = []
    try:
        if engine is not None:
            model, tokenizer, translator, name, source = (
                engine.model,
                engine.tokenizer,
                engine.translator,
                engine.name,
                "given engine",
            )
        elif args.gpu_8b_shape:
            from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

            model, tokenizer = random_llama(LLAMA_8B_SHAPE, "cuda", torch.bfloat16)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                translator = ParameterTranslator(TranslatorConfig.for_model(model))
            name, source = "llama-3-8b-shape-random", "random"
        else:
            model, tokenizer, translator, name, source = load_parts(args)
        logger.info("serving %s (translator: %s) on %s with %d torch threads", name, source, args.device, args.threads)
        workloads = build_workloads(shapes, count)

        def new_engine(**config: Any) -> Engine:
            settings = {
                "max_batch_size": args.max_batch_size,
                "max_queue": 64,
                "timeout_s": args.request_timeout,
                "delta_cache_size": 0,
                **config,
            }
            return Engine(model, tokenizer, translator, name=name, config=EngineConfig(**settings))

        rows: list[dict[str, Any]] = []
        references: dict[tuple[str, str], dict[int, str]] = {}
        # ---------------------------------------------------------------- throughput
        served = new_engine()
        try:
            with BackgroundServer(create_app(served, max_tokens_limit=max(args.decode_tokens, args.rag_tokens))) as server:
                base_url = server.base_url
                warm = chat_body({"question": "Hi", "documents": ["Warm-up passage."]}, "combine", 2)
                asyncio.run(run_level(base_url, [warm], 1, args.request_timeout))
                for mode in modes:  # combine first: the targets are in combine mode
                    for workload in workloads:
                        tokens = workload.shape.max_tokens
                        bodies = [chat_body(r, mode, tokens) for r in workload.requests]
                        reference = references.setdefault((workload.shape.name, mode), {})
                        baseline = baseline_cpu = None
                        for level in levels:
                            if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                                skipped.append(
                                    {
                                        "shape": workload.shape.name,
                                        "mode": mode,
                                        "concurrency": level,
                                        "reason": f"over --budget-s {args.budget_s:g}",
                                    }
                                )
                                continue
                            level_bodies = bodies[: per_level[level]]
                            before = (served.stats.steps, served.stats.step_rows)
                            cpu_start = time.process_time()
                            results, wall = asyncio.run(run_level(base_url, level_bodies, level, args.request_timeout))
                            cpu = time.process_time() - cpu_start
                            stats = (served.stats.steps - before[0], served.stats.step_rows - before[1])
                            row = level_row(workload.shape.name, mode, level, results, wall, cpu, stats, reference)
                            for i, result in enumerate(results):
                                if result.status == 200:
                                    reference.setdefault(i, result.text)
                            if level == 1:
                                baseline, baseline_cpu = row["tokens/s"], row["tokens/cpu_s"]
                            row["ratio"] = row["tokens/s"] / baseline if baseline else None
                            row["cpu_ratio"] = row["tokens/cpu_s"] / baseline_cpu if baseline_cpu else None
                            if args.target == "ray":
                                row["target"] = "single"
                            rows.append(row)
                            logger.info(
                                "%s/%s c=%d: %d req, %.1f tok/s (x%.2f; per CPU-s x%.2f), mean batch %.1f, %d/%d mismatches",
                                row["shape"],
                                mode,
                                level,
                                row["requests"],
                                row["tokens/s"],
                                row["ratio"] or 0,
                                row["cpu_ratio"] or 0,
                                row["mean_batch"],
                                row["mismatches"],
                                row["checked"],
                            )
        finally:
            served.close()
        # ---------------------------------------------------------------- Ray Serve
        ray_report = None
        if args.target == "ray":
            ray_report = ray_levels(args, name, modes, workloads, levels, per_level, references, rows)

        # ---------------------------------------------------------------- delta cache
        cache_report = None if args.skip_cache else delta_cache_check(new_engine, workloads, args)
        # ---------------------------------------------------------------- overload
        overload_report = None if args.skip_overload else overload_check(new_engine, workloads, args)
    finally:
        torch.set_num_threads(previous_threads)

    targets = []
    for (shape, mode, level), least in TARGETS.items():
        found = next((r for r in rows if (r["shape"], r["mode"], r["concurrency"]) == (shape, mode, level)), None)
        if found is not None:
            targets.append(
                {
                    "shape": shape,
                    "mode": mode,
                    "concurrency": level,
                    "target_ratio": least,
                    "ratio": found["ratio"],
                    "cpu_ratio": found["cpu_ratio"],
                    "met": bool(found["ratio"] and found["ratio"] >= least),
                }
            )
    now = _dt.datetime.now(_dt.timezone.utc)
    payload = {
        "benchmark": "serve_load",
        "created": now.isoformat(timespec="seconds"),
        "config": {
            "model": name,
            "translator": source,
            "device": args.device,
            "threads": args.threads,
            "levels": levels,
            "requests_per_level": {str(k): v for k, v in sorted(per_level.items())},
            "modes": modes,
            "shapes": [vars(s) for s in shapes],
            "max_batch_size": args.max_batch_size,
            "delta_cache": "off for throughput (every combine request encodes its own passages)",
            "budget_s": args.budget_s,
            "quick": args.quick,
            "argv": list(argv) if argv is not None else sys.argv[1:],
        },
        "environment": {**env, "load_average_before": load_before, "load_average_after": load_average()},
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "skipped": skipped,
        "targets": targets,
        "delta_cache": cache_report,
        "overload": overload_report,
    }
    if ray_report is not None:
        payload["ray"] = ray_report
        payload["ray_targets"] = ray_report["targets"]
    stem = f"serve_load-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    out = Path(args.out) if args.out else RESULTS_DIR / stem
    if out.suffix != ".json":
        out = out / stem
    write_json_atomic(out, payload)
    columns = [
        *(["target"] if args.target == "ray" else []),
        "shape",
        "mode",
        "concurrency",
        "requests",
        "completion_tokens",
        "seconds",
        "tokens/s",
        "ratio",
        "cpu_ratio",
        "p50_s",
        "p99_s",
        "ttft_p50_s",
        "mean_batch",
        "checked",
        "mismatches",
        *(["vs_single"] if args.target == "ray" else []),
    ]
    print(format_table(rows, columns))
    for target in payload.get("ray_targets", []):
        print(
            f"ray target {target['shape']}/{target['mode']} at {target['concurrency']}: 1 replica x{target['vs_single']:.2f} "
            f"of single-process (>= x{target['least']:g}) {'met' if target['met'] else 'MISSED'}"
        )
    for item in skipped:
        print(f"skipped {item['shape']}/{item['mode']} at {item['concurrency']}: {item['reason']}")
    for target in targets:
        print(
            f"target {target['shape']}/{target['mode']} at {target['concurrency']}: x{target['ratio'] or 0:.2f} "
            f"(>= x{target['target_ratio']:g}) {'met' if target['met'] else 'MISSED'}; per CPU-second x{target['cpu_ratio'] or 0:.2f}"
        )
    if cache_report:
        print(
            f"delta cache: hit rate {cache_report['hit_rate_metrics']:.2f} (/metrics), "
            f"translate {cache_report['translate_first_s']:.3f}s first vs {cache_report['translate_repeat_s']:.3f}s repeated"
        )
    if overload_report:
        print(
            f"overload: {overload_report['sent']} sent -> {overload_report['statuses']} (lost or hung: {overload_report['lost']})"
        )
    print(
        f"wrote {out} ({payload['seconds']:.0f} s, load average {load_before} -> {payload['environment']['load_average_after']})"
    )
    return 0


def metrics_steps(base_url: str) -> tuple[int, int]:
    """(decode steps with rows, rows decoded) from ``/metrics`` (the batch-size histogram)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=30).text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return int(values.get("hyco_rag_batch_size_count", 0)), int(values.get("hyco_rag_batch_size_sum", 0))


#: Least share of the single-process throughput Ray Serve with one replica keeps (issue 15).
RAY_LEAST_RATIO = 0.85


def ray_levels(
    args: argparse.Namespace,
    name: str,
    modes: list[str],
    workloads: list[Workload],
    levels: list[int],
    per_level: dict[int, int],
    references: dict[tuple[str, str], dict[int, str]],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The same levels through Ray Serve with each replica count of ``--ray-replicas``."""
    import ray
    from ray import serve

    from hyco_rag.distributed import RayServeConfig
    from hyco_rag.distributed.serve import run_local

    counts = [int(c) for c in args.ray_replicas.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise ValueError("--ray-replicas values must be >= 1")
    cpus = args.ray_cpus or float(os.cpu_count() or 1)
    started = time.perf_counter()
    report: dict[str, Any] = {"replicas": counts, "ray_cpus": cpus, "startup_s": {}, "targets": []}
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        },
    )
    try:
        for count in counts:
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            share = min(1.0, (cpus - 0.5) / count)  # leave room for the ingress and compressor
            config = RayServeConfig.from_dict(
                {
                    "engine": {
                        "factory": "hyco_rag.distributed.testing:benchmark_engine",
                        "factory_kwargs": {
                            "model": args.model,
                            "translator": args.translator,
                            "device": args.device,
                            "threads": args.threads,
                            "max_batch_size": args.max_batch_size,
                            "max_queue": 64,
                            "timeout_s": args.request_timeout,
                            "delta_cache_size": 0,
                        },
                    },
                    "compressor": None,
                    "generator_deployment": {
                        "num_replicas": count,
                        "num_cpus": share,
                        "max_ongoing_requests": 64 + args.max_batch_size,
                    },
                    "ingress_deployment": {"num_cpus": 0.25},
                    "server": {"max_tokens_limit": max(args.decode_tokens, args.rag_tokens)},
                    "request_timeout_s": args.request_timeout + 60,
                }
            )
            begin = time.perf_counter()
            run_local(config, port=port)
            report["startup_s"][str(count)] = time.perf_counter() - begin
            base_url = f"http://127.0.0.1:{port}"
            target = f"ray-{count}"
            try:
                warm = chat_body({"question": "Hi", "documents": ["Warm-up passage."]}, "combine", 2)
                asyncio.run(run_level(base_url, [warm] * (2 * count), 2 * count, args.request_timeout))
                for mode in modes:
                    for workload in workloads:
                        bodies = [chat_body(r, mode, workload.shape.max_tokens) for r in workload.requests]
                        reference = references.get((workload.shape.name, mode), {})
                        baseline = None
                        for level in levels:
                            single = next(
                                (
                                    r
                                    for r in rows
                                    if (r.get("target"), r["shape"], r["mode"], r["concurrency"])
                                    == ("single", workload.shape.name, mode, level)
                                ),
                                None,
                            )
                            if single is None:
                                continue  # skipped for the single-process server too
                            before = metrics_steps(base_url)
                            cpu_start = time.process_time()
                            results, wall = asyncio.run(
                                run_level(base_url, bodies[: per_level[level]], level, args.request_timeout)
                            )
                            cpu = time.process_time() - cpu_start
                            after = metrics_steps(base_url)
                            row = level_row(
                                workload.shape.name,
                                mode,
                                level,
                                results,
                                wall,
                                cpu,
                                (after[0] - before[0], after[1] - before[1]),
                                reference,
                            )
                            if level == 1:
                                baseline = row["tokens/s"]
                            row["ratio"] = row["tokens/s"] / baseline if baseline else None
                            row["cpu_ratio"] = None  # the driver's CPU time does not include the replicas'
                            row["target"] = target
                            row["vs_single"] = row["tokens/s"] / single["tokens/s"] if single["tokens/s"] else None
                            rows.append(row)
                            logger.info(
                                "%s %s/%s c=%d: %.1f tok/s (x%.2f of single), p50 %.1fs p99 %.1fs, %d/%d mismatches",
                                target,
                                row["shape"],
                                mode,
                                level,
                                row["tokens/s"],
                                row["vs_single"] or 0,
                                row["p50_s"] or 0,
                                row["p99_s"] or 0,
                                row["mismatches"],
                                row["checked"],
                            )
                            if count == 1:
                                report["targets"].append(
                                    {
                                        "shape": workload.shape.name,
                                        "mode": mode,
                                        "concurrency": level,
                                        "least": RAY_LEAST_RATIO,
                                        "vs_single": row["vs_single"] or 0.0,
                                        "met": bool(row["vs_single"] and row["vs_single"] >= RAY_LEAST_RATIO),
                                    }
                                )
            finally:
                serve.shutdown()
    finally:
        ray.shutdown()
    report["seconds"] = time.perf_counter() - started
    return report


def delta_cache_check(new_engine: Any, workloads: list[Workload], args: argparse.Namespace) -> dict[str, Any]:
    """Passages sent twice (combine): the second time their deltas come from the cache."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from hyco_rag.server import BackgroundServer, create_app

    requests = workloads[0].requests[:4]
    cached = new_engine(delta_cache_size=256)
    try:
        with BackgroundServer(create_app(cached)) as server:
            bodies = [chat_body(r, "combine", 4) for r in requests]
            first, _ = asyncio.run(run_level(server.base_url, bodies, 4, args.request_timeout))
            again, _ = asyncio.run(run_level(server.base_url, bodies, 4, args.request_timeout))
            text = httpx.get(server.base_url + "/metrics", timeout=30).text
    finally:
        cached.close()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}

    def mean_translate(results: list[Result]) -> float:
        times = [r.translate_s for r in results if r.translate_s is not None]
        return statistics.mean(times) if times else 0.0

    return {
        "requests": len(bodies) * 2,
        "passages_per_request": len(requests[0]["documents"]),
        "hits": values.get("hyco_rag_delta_cache_hits_total"),
        "misses": values.get("hyco_rag_delta_cache_misses_total"),
        "hit_rate_metrics": values.get("hyco_rag_delta_cache_hit_rate"),
        "translate_first_s": mean_translate(first),
        "translate_repeat_s": mean_translate(again),
        "same_answers": [r.text for r in first] == [r.text for r in again],
    }


def overload_check(new_engine: Any, workloads: list[Workload], args: argparse.Namespace) -> dict[str, Any]:
    """More concurrent requests than a small engine's queue + batch: each gets 200, 429 or 503."""
    batch, queue = 2, 2
    sent = 3 * (batch + queue)
    small = new_engine(max_batch_size=batch, max_queue=queue)
    requests = (workloads[0].requests * sent)[:sent]
    start = time.perf_counter()
    try:
        from hyco_rag.server import BackgroundServer, create_app

        with BackgroundServer(create_app(small)) as server:
            bodies = [chat_body(r, "rag", 8) for r in requests]
            results, wall = asyncio.run(run_level(server.base_url, bodies, sent, args.request_timeout))
    finally:
        small.close()
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    lost = sent - sum(v for k, v in statuses.items() if k in ("200", "429", "503"))
    return {
        "max_batch_size": batch,
        "max_queue": queue,
        "sent": sent,
        "statuses": statuses,
        "lost": lost,
        "seconds": time.perf_counter() - start,
        "wall": wall,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise SystemExit(main())
