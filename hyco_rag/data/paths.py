"""Where the shared QA data lives (``../shared/data`` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class DataNotFoundError(FileNotFoundError):
    """The shared data folder or one of its files is missing."""


def shared_data_dir() -> Path:
    """Locate the shared data folder.

    ``HYCO_RAG_DATA`` wins; otherwise ``shared/data`` next to the checkout (or next to the
    current directory), which is how the team's machines and CI lay it out.
    """
    candidates = []
    if os.environ.get("HYCO_RAG_DATA"):
        candidates.append(Path(os.environ["HYCO_RAG_DATA"]))
    candidates += [_PACKAGE_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataNotFoundError(
        "Shared QA data not found; set HYCO_RAG_DATA to the folder holding squad/, "
        f"hotpotqa-train/, ... (looked in: {', '.join(map(str, candidates))})"
    )


def data_file(relative: str) -> Path:
    """Path of one file under the shared data folder, with a clear error if absent."""
    path = shared_data_dir() / relative
    if not path.is_file():
        raise DataNotFoundError(f"Shared data file missing: {path}")
    return path
