"""`hyco-rag eval`: QA evaluation."""

from __future__ import annotations

import argparse

from hyco_rag.cli._pending import pending


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="QA evaluation (issue #3)")
    parser.set_defaults(handler=pending("QA evaluation", 3))
