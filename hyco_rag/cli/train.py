"""`hyco-rag train {compressor,prag,translator,hybrid}`: training pipelines."""

from __future__ import annotations

import argparse
import importlib

#: name -> (help, module whose ``configure(name, parser)`` adds the arguments and the handler).
PIPELINES = {
    "compressor": ("train the HyCo compressor on QA data", "hyco_rag.cli.train_compressor"),
    "prag": ("collect per-passage LoRAs (DyPRAG stage 1)", "hyco_rag.cli.train_dyprag"),
    "translator": ("train the DyPRAG parameter translator (stage 2)", "hyco_rag.cli.train_dyprag"),
    "hybrid": ("train the hybrid adapter (HyCo2 soft tokens)", "hyco_rag.cli.train_hybrid"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the compressor, the DyPRAG translator or the hybrid adapter")
    pipelines = parser.add_subparsers(dest="pipeline", metavar="PIPELINE", required=True)
    for name, (help_text, module) in PIPELINES.items():
        sub = pipelines.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        importlib.import_module(module).configure(name, sub)


def command_line(args: argparse.Namespace) -> str:
    """The ``hyco-rag train <pipeline>`` command that reproduces ``args`` (for reports)."""
    skip = {"handler", "command", "pipeline", "verbose", "_leak_check"}
    out = [f"hyco-rag train {args.pipeline}"]
    for key, value in sorted(vars(args).items()):
        if key in skip or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        out.append(flag if value is True else f"{flag} {value}")
    return " ".join(out)
