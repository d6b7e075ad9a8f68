"""`hyco-rag train {compressor,prag,translator}`: training pipelines."""

from __future__ import annotations

import argparse
import importlib

from hyco_rag.cli._pending import pending

#: name -> (help, issue) of each training pipeline.
PIPELINES = {
    "compressor": ("train the HyCo compressor on QA data", 3),
    "prag": ("collect per-passage LoRAs (DyPRAG stage 1)", 4),
    "translator": ("train the DyPRAG parameter translator (stage 2)", 4),
}

#: built pipelines: name -> module whose ``configure(name, parser)`` adds arguments and handler.
BUILT = {
    "compressor": "hyco_rag.cli.train_compressor",
    "prag": "hyco_rag.cli.train_dyprag",
    "translator": "hyco_rag.cli.train_dyprag",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the compressor or the DyPRAG translator")
    pipelines = parser.add_subparsers(dest="pipeline", metavar="PIPELINE", required=True)
    for name, (help_text, issue) in PIPELINES.items():
        sub = pipelines.add_parser(
            name, help=f"{help_text} (issue #{issue})", formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        sub.set_defaults(handler=pending(help_text, issue))
        if name in BUILT:
            importlib.import_module(BUILT[name]).configure(name, sub)
