"""`hyco-rag demo`: the main job on the embedded defaults (a real RAG run, offline)."""

from __future__ import annotations

import argparse

from hyco_rag.demo import MODES, DemoConfig, run_demo


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        llm=args.llm, encoder=args.encoder, k=args.k, questions=args.questions,
        max_new_tokens=args.max_new_tokens, mode=args.mode, rate=args.rate,
    )
    answers = run_demo(config, progress=not args.quiet)
    for number, item in enumerate(answers, 1):
        saved = item.passage_tokens - item.context_tokens
        print(f"\n[{number}] Q: {item.question}")
        print(f"    A: {item.answer!r}   gold: {' | '.join(item.gold)}   EM={item.em:.0f} F1={item.f1:.2f}")
        print(
            f"    context tokens: {item.context_tokens} of {item.passage_tokens} retrieved "
            f"(saved {saved})   gold passage retrieved: {item.gold_retrieved}"
        )
    if answers:
        count = len(answers)
        used = sum(a.context_tokens for a in answers)
        retrieved = sum(a.passage_tokens for a in answers)
        print(
            f"\n{count} questions, mode={config.mode}: EM {100 * sum(a.em for a in answers) / count:.1f}  "
            f"F1 {100 * sum(a.f1 for a in answers) / count:.1f}  "
            f"context tokens {used} of {retrieved} retrieved ({retrieved - used} saved)"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="answer questions over the bundled corpus with retrieval (offline)")
    parser.add_argument(
        "--mode", choices=MODES, default="rag",
        help="how retrieved passages reach the LLM: in the prompt (rag), compressed (hyco), as LoRA deltas "
        "(dyprag), or deltas plus passages (combine, combine-hyco)",
    )
    parser.add_argument("--rate", type=float, default=0.25, help="share of tokens HyCo keeps (hyco, combine-hyco)")
    parser.add_argument("--questions", type=int, default=None, help="how many demo questions (default: all 12)")
    parser.add_argument("-k", type=int, default=3, help="passages retrieved per question")
    parser.add_argument("--llm", default=None, help="HF id or local folder of the reader (default: embedded SmolLM2)")
    parser.add_argument("--encoder", default=None, help="retrieval encoder (default: embedded all-MiniLM-L6-v2)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
