"""`hyco-rag bench NAME [ARGS...]`: run a benchmark script from ``benchmarks/``."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

_BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in _BENCHMARKS_DIR.glob("*.py") if not p.name.startswith("_"))


def run(args: argparse.Namespace) -> int:
    script = _BENCHMARKS_DIR / f"{args.name}.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"no benchmark named {args.name!r}; available: {', '.join(available()) or 'none'} "
            f"(benchmarks ship with the source checkout, looked in {_BENCHMARKS_DIR})"
        )
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark from benchmarks/ (prints a table, writes JSON)")
    parser.add_argument("name", help="benchmark script name, e.g. compression_qa")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    parser.set_defaults(handler=run)
