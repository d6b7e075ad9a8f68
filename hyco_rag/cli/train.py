"""`hyco-rag train {compressor,prag,translator}`: training pipelines."""

from __future__ import annotations

import argparse
import importlib

#: name -> (help, module whose ``configure(name, parser)`` adds the arguments and the handler).
PIPELINES = {
    "compressor": ("train the HyCo compressor on QA data", "hyco_rag.cli.train_compressor"),
    "prag": ("collect per-passage LoRAs (DyPRAG stage 1)", "hyco_rag.cli.train_dyprag"),
    "translator": ("train the DyPRAG parameter translator (stage 2)", "hyco_rag.cli.train_dyprag"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the compressor or the DyPRAG translator")
    pipelines = parser.add_subparsers(dest="pipeline", metavar="PIPELINE", required=True)
    for name, (help_text, module) in PIPELINES.items():
        sub = pipelines.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        importlib.import_module(module).configure(name, sub)
