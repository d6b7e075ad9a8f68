"""`hyco-rag serve`: serving a model with DyPRAG deltas."""

from __future__ import annotations

import argparse

from hyco_rag.cli._pending import pending


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serving a model with DyPRAG deltas (issue #4)")
    parser.set_defaults(handler=pending("serving a model with DyPRAG deltas", 4))
