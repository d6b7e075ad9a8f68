"""`hyco-rag compress`: document compression."""

from __future__ import annotations

import argparse

from hyco_rag.cli._pending import pending


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compress", help="document compression (issue #3)")
    parser.set_defaults(handler=pending("document compression", 3))
