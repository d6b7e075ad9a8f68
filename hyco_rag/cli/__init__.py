"""The ``hyco-rag`` command line.

One module per subcommand, each exposing ``register(subparsers)``; this file only wires them
together, sets up logging, and turns our expected errors into one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hyco_rag import __version__

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("demo", "compress", "eval", "train", "bench", "serve")

logger = logging.getLogger("hyco_rag.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyco-rag",
        description="Cheaper, more accurate RAG: compress retrieved passages (HyCo) or turn them into LoRA deltas (DyPRAG).",
    )
    parser.add_argument("--version", action="version", version=f"hyco-rag {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"hyco_rag.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input or a missing model/data file: the message already says what to do.
        logger.debug("command failed", exc_info=True)
        print(f"hyco-rag {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
