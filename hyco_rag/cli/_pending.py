"""Subcommands whose implementation lands with a later issue.

They are registered now so the command tree is stable, and they fail loudly (exit 3) naming
the issue, instead of pretending to work.
"""

from __future__ import annotations

import argparse
import sys


def pending(feature: str, issue: int):
    def handler(args: argparse.Namespace) -> int:
        print(f"hyco-rag {args.command}: {feature} is not implemented yet (issue #{issue}).", file=sys.stderr)
        return 3

    return handler
