"""On-disk caches of what training repeats: passage token states and teacher log-probabilities.

Each entry is one small safetensors file named by the SHA-1 of its key, written atomically
(temporary file + ``os.replace``), so an interrupted run keeps every finished entry and a rerun
computes only what is missing.  The folder name carries the model's fingerprint, so states of
another model are never mixed in.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TensorStore:
    """``key -> {name: tensor}`` in one folder, one file per key."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        digest = _key(key)
        return self.directory / digest[:2] / f"{digest}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path(key)))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from hyco_rag.results import save_safetensors_atomic

        save_safetensors_atomic({name: t.contiguous() for name, t in tensors.items()}, self.path(key))

    def fill(
        self,
        keys: Sequence[str],
        compute: Callable[[list[str]], list[dict[str, torch.Tensor]]],
        *,
        batch_size: int,
        desc: str,
    ) -> None:
        """Compute and store every missing key, ``batch_size`` at a time, with a progress bar."""
        missing = sorted((k for k in dict.fromkeys(keys) if k not in self), key=len)  # similar lengths share a batch
        if not missing:
            return
        logger.info("%s: %d of %d entries to compute", desc, len(missing), len(set(keys)))
        with tqdm(total=len(missing), desc=desc, unit="item") as bar:
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                for key, tensors in zip(chunk, compute(chunk)):
                    self.put(key, tensors)
                bar.update(len(chunk))
