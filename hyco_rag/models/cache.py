"""The hyco-rag cache folder and atomic publication of folders into it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """Root of hyco-rag's on-disk cache.

    ``HYCO_RAG_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/hyco_rag`` or ``~/.cache/hyco_rag``.
    """
    explicit = os.environ.get("HYCO_RAG_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hyco_rag"
    root.mkdir(parents=True, exist_ok=True)
    return root


def publish_dir_atomically(staging: Path, target: Path) -> Path:
    """Move a fully written ``staging`` folder to ``target`` in one rename.

    Readers therefore see either no folder or a complete one, never a half-written cache
    entry. If another process published ``target`` first, its copy is kept and ours dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return target
