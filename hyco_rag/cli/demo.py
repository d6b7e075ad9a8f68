"""`hyco-rag demo`: the main job on the embedded defaults, modes side by side in one table (offline)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hyco_rag.demo import DEFAULT_MODES, DemoConfig, DemoRun, default_threads, run_demo
from hyco_rag.engine.modes import MODE_NAMES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Third-party loggers whose INFO lines are noise in the demo's output.
_NOISY_LOGGERS = ("transformers", "sentence_transformers", "huggingface_hub", "torch", "urllib3", "filelock")


def quiet_libraries() -> None:
    """No transformers / huggingface_hub / tqdm progress bars or info lines during the demo."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with contextlib.suppress(ImportError, AttributeError):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _cell(answer: Any) -> str:
    from rich.markup import escape

    text = escape(answer.answer) if answer.answer else "[dim](empty)[/dim]"
    return f"{text}\n[dim]F1 {answer.f1:.2f} · {answer.context_tokens} tok · {answer.seconds:.1f} s[/dim]"


def render_table(run: DemoRun) -> Table:
    """The side-by-side table: one row per question, one column per mode, then a summary row."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"hyco-rag demo: {len(run.results)} questions, k={run.config.k}, HyCo rate {run.config.rate:g}",
        caption="each cell: answer, then F1 against the gold answers · context tokens in the prompt · seconds"
        + ("" if run.config.sequential else " (a question's modes are decoded in one batch: --sequential to time them apart)"),
        show_lines=True,
        expand=False,
    )
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("question / gold", ratio=3, overflow="fold")
    for mode in run.modes:
        table.add_column(mode, ratio=2, overflow="fold")
    for number, result in enumerate(run.results, 1):
        gold = " | ".join(result.gold)
        marker = "" if result.gold_retrieved else " [red](gold passage not retrieved)[/red]"
        question = f"{escape(result.question)}\n[green]gold: {escape(gold)}[/green]{marker}"
        table.add_row(str(number), question, *(_cell(result.answers[mode]) for mode in run.modes))
    cells = []
    for summary in run.summary():
        saved = ""
        if summary.saved_vs_rag is not None and summary.mode != "rag":
            rag_tokens = summary.context_tokens + summary.saved_vs_rag
            share = 100 * summary.saved_vs_rag / rag_tokens if rag_tokens else 0.0
            saved = f"\nsaved vs rag: {summary.saved_vs_rag} tok ({share:.0f}%)"
        cells.append(
            f"[bold]mean F1 {summary.mean_f1:.2f}[/bold]\n{summary.context_tokens} context tok total{saved}\n{summary.seconds:.1f} s"
        )
    table.add_row("", "[bold]summary[/bold]", *cells, end_section=True)
    return table


def print_run(run: DemoRun, console: Console) -> None:
    for mode, why in run.unavailable.items():
        console.print(f"[yellow]{mode}: unavailable: {why}[/yellow]", soft_wrap=True)
    console.print(render_table(run))
    cache = {True: "index cached", False: "index built and cached", None: "index given"}[run.index_cache_hit]
    first = f"{run.first_answer_s:.1f} s" if run.first_answer_s is not None else "-"
    console.print(
        f"ready in {run.ready_s:.1f} s ({cache}), first answer at {first}, "
        f"{len(run.results)} questions in {run.total_s:.1f} s, {run.threads} torch thread(s)",
        style="dim",
        soft_wrap=True,
    )


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """Our own progress on stderr: a spinner on a terminal, plain timed lines otherwise."""
    if not enabled:
        yield None
        return
    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()
    if console.is_terminal:
        with console.status("starting") as status:
            yield lambda message: status.update(f"{message} ({time.perf_counter() - start:.1f} s)")
    else:
        yield lambda message: console.print(f"[{time.perf_counter() - start:5.1f} s] {message}", highlight=False)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    config = DemoConfig(
        llm=args.llm,
        encoder=args.encoder,
        translator=args.translator,
        modes=args.modes,
        k=args.k,
        questions=args.questions,
        max_new_tokens=args.max_new_tokens,
        rate=args.rate,
        threads=args.threads if args.threads is not None else default_threads(),
        device=args.device,
        index_cache=not args.no_index_cache,
        sequential=args.sequential,
    )
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    quiet_libraries()
    with _progress(not args.quiet) as report:
        result = run_demo(config, report=report)
    console = Console(width=None if sys.stdout.isatty() else 160)
    print_run(result, console)
    if args.json:
        from hyco_rag.results import write_json_atomic

        path = write_json_atomic(args.json, result.to_dict())
        console.print(f"answers written to {path}", style="dim", soft_wrap=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="answer bundled questions with retrieval, modes side by side in one table (offline)",
        description="Retrieve passages for the bundled SQuAD questions and answer each question in several modes "
        "through one engine: plain RAG, HyCo-compressed RAG, DyPRAG deltas + passages, ... "
        "Prints answer, F1, context tokens and seconds per mode.",
    )
    parser.add_argument(
        "--modes",
        default=",".join(m.value for m in DEFAULT_MODES),
        help=f"comma-separated modes to compare, from {', '.join(MODE_NAMES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.25,
        help="share of tokens HyCo keeps in the compressing modes (hyco, hybrid, ...; default: %(default)s)",
    )
    parser.add_argument("--questions", type=int, default=None, help="how many bundled questions (default: all)")
    parser.add_argument("-k", type=int, default=3, help="passages retrieved per question (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on <= 2 cores, else min(physical cores, 4); more threads than free "
        "cores is several times slower)",
    )
    parser.add_argument("--llm", default=None, help="HF id or local folder of the reader (default: embedded SmolLM2)")
    parser.add_argument("--encoder", default=None, help="retrieval encoder (default: embedded all-MiniLM-L6-v2)")
    parser.add_argument("--translator", default=None, help="DyPRAG translator folder (default: the one shipped for SmolLM2)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length bound (default: %(default)s)")
    parser.add_argument("--no-index-cache", action="store_true", help="re-embed the corpus instead of reading the cached index")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="decode each mode alone (seconds compare the modes; default: one batch per question)",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the answers and measurements as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress messages (the table is still printed)")
    parser.set_defaults(handler=run)
