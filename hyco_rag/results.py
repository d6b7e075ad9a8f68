"""Benchmark results as JSON (one file per run, with the environment that produced it), and the
project's one way of writing a file atomically.

Every file the project writes (results, weights, caches, checkpoints) goes through
:func:`atomic_output`: a temporary file in the same folder and an ``os.replace``, so an
interrupted run never leaves a truncated file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RESULTS_DIR = Path("benchmarks") / "results"


def environment() -> dict[str, Any]:
    """Versions and hardware that a number depends on."""
    import torch

    import hyco_rag

    info: dict[str, Any] = {
        "hyco_rag": hyco_rag.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null is honest about "no number"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``path`` that replaces ``path`` when the block ends without error.

    On an error the temporary file is removed and ``path`` keeps what it held before.  The file
    gets the permissions the user's umask gives (``mkstemp`` alone makes it private, and shipped
    weights, caches and results are for everyone).  ``suffix`` ends the temporary name (a writer
    that infers the format from it, such as matplotlib, needs the real one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # gone already after the replace


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_output`)."""
    path = Path(path)
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save ``tensors`` (contiguous) as safetensors at ``path`` atomically (:func:`atomic_output`)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_output(path) as temporary:
        save_file(dict(tensors), str(temporary), metadata=dict(metadata) if metadata is not None else None)
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as pretty JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(_jsonable(payload), indent=2, ensure_ascii=False) + "\n")


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    *,
    config: dict[str, Any] | None = None,
    results_dir: str | Path = RESULTS_DIR,
    timestamp: bool = True,
) -> Path:
    """Write a benchmark's rows with its config and environment; returns the file path.

    The file is ``<results_dir>/<name>[-<UTC timestamp>].json`` so successive runs are kept.
    """
    now = _dt.datetime.now(_dt.timezone.utc)
    stem = f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}" if timestamp else name
    payload = {
        "benchmark": name,
        "created": now.isoformat(timespec="seconds"),
        "config": config or {},
        "environment": environment(),
        "rows": rows,
    }
    return write_json_atomic(Path(results_dir) / f"{stem}.json", payload)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` for the terminal (floats to 2 decimals)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
