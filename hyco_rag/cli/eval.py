"""`hyco-rag eval`: QA evaluation of context compression (methods x rates, SmolLM2 reader).

The same run as ``benchmarks/compression_qa.py``; the options live in
:func:`hyco_rag.evaluation.qa_eval.add_arguments` so both entry points stay identical.
"""

from __future__ import annotations

import argparse
import os


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hyco_rag.evaluation.qa_eval import main

    return main(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    from hyco_rag.evaluation.qa_eval import add_arguments

    parser = subparsers.add_parser(
        "eval",
        help="QA evaluation of compression: F1/EM, answer recall, tokens, speed per method and rate",
        description="Compare HyCo with no/full/oracle context and peer compressors on SQuAD (and multi-hop sets) "
        "with a small reader LLM; prints a table, writes JSON and a PNG under --results-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
