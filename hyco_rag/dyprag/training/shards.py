"""(passage, LoRA) pairs on disk: safetensors shards written atomically, plus a manifest.

Layout of a pairs folder::

    manifest.json                 config, base-model identity, shard list (rewritten per shard)
    shard-00000.safetensors       embeddings [n, D]; A::<module> [n, r, in]; B::<module> [n, out, r]
                                  metadata: passages (JSON list), stats (JSON list)

A shard is written to a temporary file and renamed, so a crash never leaves a half shard; a
rerun skips shards whose passage ids already match (resumable collection).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from hyco_rag.dyprag.training.data import TrainingPassage
from hyco_rag.results import save_safetensors_atomic

MANIFEST = "manifest.json"


@dataclass
class PairShard:
    """One loaded shard."""

    passages: list[TrainingPassage]
    embeddings: torch.Tensor
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    stats: list[dict[str, float]]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_shard(
    path: Path,
    passages: list[TrainingPassage],
    embeddings: torch.Tensor,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    stats: list[dict[str, float]],
) -> None:
    tensors = {"embeddings": embeddings.detach().float().cpu().contiguous()}
    for name, (a, b) in factors.items():
        tensors[f"A::{name}"] = a.detach().float().cpu().contiguous()
        tensors[f"B::{name}"] = b.detach().float().cpu().contiguous()
    metadata = {
        "passages": json.dumps([p.to_dict() for p in passages]),
        "stats": json.dumps(stats),
        "format": "hyco-rag-prag-pairs",
    }
    save_safetensors_atomic(tensors, path, metadata)


def read_shard(path: Path) -> PairShard:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != "hyco-rag-prag-pairs":
            raise ValueError(f"{path} is not a PRAG pairs shard")
        embeddings = handle.get_tensor("embeddings")
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in handle.keys():
            if key.startswith("A::"):
                name = key[3:]
                factors[name] = (handle.get_tensor(key), handle.get_tensor(f"B::{name}"))
    passages = [TrainingPassage.from_dict(d) for d in json.loads(metadata["passages"])]
    return PairShard(passages, embeddings, factors, json.loads(metadata.get("stats", "[]")))


def shard_passage_ids(path: Path) -> list[str] | None:
    """Passage ids of an existing shard, or None when it is missing or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
        return [d["id"] for d in json.loads(metadata["passages"])]
    except Exception:  # a foreign or corrupt file: recollect it
        return None


def read_manifest(directory: Path) -> dict[str, object]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no PRAG pairs at {directory} (missing {MANIFEST}); run `hyco-rag train prag` first")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def load_pairs(directory: str | os.PathLike[str]) -> tuple[dict[str, object], list[PairShard]]:
    """The manifest and every shard it lists."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    shards = [read_shard(directory / entry["file"]) for entry in cast("list[dict[str, Any]]", manifest["shards"])]
    if not shards:
        raise ValueError(f"{directory} lists no shards")
    return manifest, shards
