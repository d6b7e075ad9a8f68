"""Compression QA benchmark: does a small reader answer better from compressed context?

SQuAD v1.1 dev, 10 passages per question (gold + 9 same-article distractors), SmolLM2-135M
reader (greedy, short answers), rates 1/2, 1/4, 1/8, 1/10, side by side: no context, full
context, gold-only oracle, HyCo (ours), random word dropping, LangChain EmbeddingsFilter
(MiniLM), sentence-level MiniLM selection and LongLLMLingua (llmlingua 0.2.2, SmolLM2 as its
small LM, in its own venv). Generality: HyCo, HyCo with a 2-hop evidence chain
(``hyco_multihop``), sentence selection, full context and the oracle on the held-out HotpotQA /
MuSiQue / 2WikiMultihopQA splits, which HyCo never trained on.

Prints a table and the issue's targets, writes JSON (hyco_rag.results.write_results) and a PNG
plot of F1 vs kept share next to it. See docs/benchmarks.md for the columns.

    python benchmarks/compression_qa.py                       # the committed run's defaults
    python benchmarks/compression_qa.py --quick --no-write    # smoke run, a few minutes
    hyco-rag eval --limit 50 --skip-llmlingua                 # the same through the CLI
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hyco_rag.evaluation.qa_eval import add_arguments, main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(arguments))
