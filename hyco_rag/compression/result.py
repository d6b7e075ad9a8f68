"""What a compression returns: one `CompressedPassage` per input document, plus run stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CompressedPassage:
    """One compressed document.

    ``index`` is the document's position in the input; ``kept_spans`` are the character spans
    of the *original* text whose units were kept (adjacent kept units merge into one span);
    ``ratio`` is ``compressed_tokens / original_tokens`` (1.0 for an empty original);
    ``relevance`` is the model's probability that the passage holds what the query needs;
    ``dropped`` is True when nothing of the passage was kept and ``drop_empty`` was set;
    ``evidence_hop`` is the hop (1-based) whose evidence sentence this passage supplied when the
    compression followed an evidence chain (``hops`` > 1), else None.
    """

    index: int
    text: str
    original_tokens: int
    compressed_tokens: int
    ratio: float
    relevance: float
    kept_spans: list[tuple[int, int]] = field(default_factory=list)
    dropped: bool = False
    evidence_hop: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "original_tokens": self.original_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": self.ratio,
            "relevance": self.relevance,
            "kept_spans": [list(span) for span in self.kept_spans],
            "dropped": self.dropped,
            "evidence_hop": self.evidence_hop,
        }

    def stats(self, index: int | None = None) -> dict[str, Any]:
        """Plain, JSON-serialisable stats for a document's metadata (no text, ``index`` overridable).

        The integrations store this under ``metadata["hyco"]``; pass ``index`` when the
        caller's position differs from the compressor's input position (e.g. nodes without
        text were skipped).
        """
        stats: dict[str, Any] = {
            "index": int(self.index if index is None else index),
            "original_tokens": int(self.original_tokens),
            "compressed_tokens": int(self.compressed_tokens),
            "ratio": float(self.ratio),
            "relevance": float(self.relevance),
            "kept_spans": [[int(start), int(end)] for start, end in self.kept_spans],
            # True when nothing of the passage is left (whatever drop_empty said), so a caller
            # that keeps such documents for their sources can tell them apart.
            "dropped": bool(self.dropped or not self.text.strip()),
        }
        if self.evidence_hop is not None:
            stats["evidence_hop"] = int(self.evidence_hop)
        return stats


@dataclass(frozen=True)
class CompressionResult:
    """The passages (input order unless ``reorder=True``) and the run's stats."""

    passages: list[CompressedPassage]
    stats: dict[str, Any]

    @property
    def texts(self) -> list[str]:
        """Compressed texts in output order; a dropped passage gives ``""``."""
        return ["" if passage.dropped else passage.text for passage in self.passages]

    def __len__(self) -> int:
        return len(self.passages)
