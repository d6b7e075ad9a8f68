"""Dense retrieval over a passage list with a sentence-transformers encoder (cosine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hyco_rag.data.schema import Passage

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class RetrievedPassage:
    passage: Passage
    score: float


class DenseIndex:
    """An in-memory embedding index: small corpora (demo, benchmarks), exact search."""

    def __init__(self, encoder: SentenceTransformer, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.passages: list[Passage] = []
        self._embeddings: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, **kwargs: object) -> DenseIndex:
        from hyco_rag.models import load_sentence_encoder

        return cls(load_sentence_encoder(name_or_path), **kwargs)  # type: ignore[arg-type]

    def _embed(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        return self.encoder.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        ).float().cpu()

    def add(self, passages: Sequence[Passage], progress: bool = False) -> None:
        """Embed and append passages (title prepended, as the encoder saw in training)."""
        texts = [f"{p.title}: {p.text}" if p.title else p.text for p in passages]
        embeddings = self._embed(texts, progress)
        self._embeddings = embeddings if self._embeddings is None else torch.cat([self._embeddings, embeddings])
        self.passages.extend(passages)

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, k: int = 3) -> list[RetrievedPassage]:
        """The ``k`` passages most similar to ``query``, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._embeddings is None:
            raise ValueError("the index is empty: add passages first")
        scores = self._embed([query])[0] @ self._embeddings.T
        top = torch.topk(scores, min(k, len(self.passages)))
        return [RetrievedPassage(self.passages[i], float(s)) for s, i in zip(top.values, top.indices)]
