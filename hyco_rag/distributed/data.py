"""Offline corpus compression with Ray Data (``hyco-rag compress --ray``).

Same contract as the plain ``hyco-rag compress`` (one output line per input line, input order,
the output written atomically), and the same output - byte for byte with ``--no-timings``
(otherwise only ``stats.seconds``, wall time, differs, as it does between two plain runs): the input is validated by
the same reader, each block of lines is compressed by the same function in the same
``--batch-size`` batches (blocks are whole multiples of it, so every batch has the plain run's
composition), and lines are encoded by the same encoder.

* ``map_batches`` over a pool of compressor actors (``--actors``, each with ``--actor-cpus`` /
  ``--actor-gpus``): each actor loads the model once and compresses whole blocks.
* Progress: a bar over input lines as blocks finish (``--no-progress`` turns it and Ray
  Data's own bars off).
* Resumability: every finished block is written atomically to the work folder
  (``OUTPUT.blocks/`` by default) under a manifest fingerprinting the input and the options;
  a rerun skips the finished blocks (a changed input or option starts over), and the folder is
  removed once the output is written.  Blocks travel back to the driver, so the work folder
  and the output need no storage shared with the workers.

Input: JSONL, or Parquet (``.parquet``: columns ``query``, ``documents`` and optionally
``id``; checked like JSONL lines, errors name the 1-based row).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from hyco_rag.cli.compress import compress_options, compress_records, encode_line, read_requests, report
from hyco_rag.results import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["BlockCompressor", "read_corpus", "run_ray"]

#: Exit status of a run stopped by ``--max-blocks`` before every block was done.
INCOMPLETE = 3
_MANIFEST = "manifest.json"


def read_corpus(path: str | Path) -> list[dict[str, Any]]:
    """The input records: JSONL through the plain CLI's reader, or a Parquet file."""
    path = Path(path)
    if path.suffix != ".parquet":
        return read_requests(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in ("query", "documents") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; need 'query' and 'documents' (and optionally 'id')")
    records = []
    for number, row in enumerate(table.to_pylist(), start=1):
        query, documents = row.get("query"), row.get("documents")
        if not isinstance(query, str):
            raise ValueError(f"{path}: row {number}: 'query' must be a string, got {type(query).__name__}")
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise ValueError(f"{path}: row {number}: 'documents' must be a list of strings")
        record: dict[str, Any] = {"query": query, "documents": documents}
        if "id" in row and row["id"] is not None:
            record["id"] = row["id"]
        records.append(record)
    return records


class BlockCompressor:
    """A Ray Data actor: loads the compressor once, compresses whole blocks of lines."""

    def __init__(
        self,
        model: str | None,
        device: str | None,
        options: dict[str, Any],
        batch_size: int,
        threads: int | None,
        timings: bool = True,
    ) -> None:
        import torch

        from hyco_rag.compression import HyCoCompressor

        if threads is not None:
            torch.set_num_threads(threads)
        self.compressor = HyCoCompressor.from_pretrained(model, device=device)
        self.options = options
        self.batch_size = batch_size
        self.timings = timings

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"block": [], "text": [], "lines": []}
        for block, payload in zip(batch["block"], batch["payload"]):
            records = [json.loads(line) for line in str(payload).split("\n")]
            lines: list[dict[str, Any]] = []
            for start in range(0, len(records), self.batch_size):
                lines.extend(
                    compress_records(
                        self.compressor, records[start : start + self.batch_size], self.options, timings=self.timings
                    )
                )
            out["block"].append(int(block))
            out["text"].append("".join(encode_line(line) for line in lines))
            out["lines"].append(len(lines))
        return out


def _fingerprint(args: argparse.Namespace, options: dict[str, Any], block_lines: int) -> str:
    digest = hashlib.sha256()
    with open(args.input, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    from hyco_rag import __version__

    settings = {
        "options": options,
        "model": args.model,
        "batch_size": args.batch_size,
        "block_lines": block_lines,
        "timings": not getattr(args, "no_timings", False),
    }
    digest.update(json.dumps({"settings": settings, "version": __version__}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _block_path(work: Path, index: int) -> Path:
    return work / f"block-{index:06d}.jsonl"


def _prepare_work_dir(work: Path, fingerprint: str, blocks: int) -> set[int]:
    """The finished blocks of an earlier run with the same input and options (else none)."""
    manifest = work / _MANIFEST
    if manifest.is_file():
        try:
            same = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            same = False
        if not same:
            logger.warning("%s holds blocks of another input or other options: starting over", work)
            shutil.rmtree(work)
    elif work.exists() and any(work.iterdir()):
        raise ValueError(f"{work} exists and is not a compress --ray work folder; remove it or pass --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest, json.dumps({"fingerprint": fingerprint, "blocks": blocks}) + "\n")
    return {i for i in range(blocks) if _block_path(work, i).is_file()}


def _check(args: argparse.Namespace) -> None:
    for name in ("batch_size", "actors", "block_lines"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.num_cpus is not None and args.num_cpus <= 0:
        raise ValueError(f"--num-cpus must be > 0, got {args.num_cpus}")
    if args.actor_cpus < 0 or args.actor_gpus < 0:
        raise ValueError("--actor-cpus and --actor-gpus must be >= 0")
    if getattr(args, "max_blocks", None) is not None and args.max_blocks < 1:
        raise ValueError(f"--max-blocks must be >= 1, got {args.max_blocks}")


def run_ray(args: argparse.Namespace) -> int:
    """``hyco-rag compress --ray``: see the module docstring."""
    from hyco_rag.distributed.serve import require_ray

    _check(args)
    require_ray()
    records = read_corpus(args.input)
    options = compress_options(args)
    # Whole batches per block: every batch is the one the plain run compresses.
    block_lines = math.ceil(args.block_lines / args.batch_size) * args.batch_size
    blocks = [records[i : i + block_lines] for i in range(0, len(records), block_lines)]
    work = Path(args.work_dir) if args.work_dir else Path(f"{args.output}.blocks")
    done = _prepare_work_dir(work, _fingerprint(args, options, block_lines), len(blocks))
    todo = [i for i in range(len(blocks)) if i not in done]
    if done:
        logger.info("resuming: %d of %d blocks already done in %s", len(done), len(blocks), work)
    limit = getattr(args, "max_blocks", None)
    if limit is not None:
        todo = todo[:limit]
    if todo:
        _run_blocks(args, options, blocks, todo, work, block_lines, skipped_lines=sum(len(blocks[i]) for i in done))
    missing = [i for i in range(len(blocks)) if not _block_path(work, i).is_file()]
    if missing:
        logger.warning(
            "%d of %d blocks done in %s; rerun the same command to finish", len(blocks) - len(missing), len(blocks), work
        )
        return INCOMPLETE
    text = "".join(_block_path(work, i).read_text(encoding="utf-8") for i in range(len(blocks)))
    write_text_atomic(args.output, text)
    shutil.rmtree(work, ignore_errors=True)
    report([json.loads(line) for line in text.splitlines()], args)
    return 0


def _run_blocks(
    args: argparse.Namespace,
    options: dict[str, Any],
    blocks: list[list[dict[str, Any]]],
    todo: list[int],
    work: Path,
    block_lines: int,
    skipped_lines: int,
) -> None:
    import ray
    from tqdm.auto import tqdm

    started = False
    if not ray.is_initialized():
        if args.ray_address:
            ray.init(address=args.ray_address, configure_logging=False)
        else:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
        started = True
    logger.info("compressing %d block(s) of up to %d lines on %d actor(s)", len(todo), block_lines, args.actors)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not args.no_progress
        items = [{"block": i, "payload": "\n".join(json.dumps(r, ensure_ascii=False) for r in blocks[i])} for i in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            BlockCompressor,
            fn_constructor_kwargs={
                "model": args.model,
                "device": args.device,
                "options": options,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "timings": not getattr(args, "no_timings", False),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_cpus=args.actor_cpus,
            num_gpus=args.actor_gpus,
        )
        total = sum(len(b) for b in blocks)
        with tqdm(total=total, initial=skipped_lines, desc="compressing", unit="line", disable=args.no_progress) as progress:
            for row in dataset.iter_rows():
                write_text_atomic(_block_path(work, int(row["block"])), str(row["text"]))
                progress.update(int(row["lines"]))
    finally:
        if started:
            ray.shutdown()
