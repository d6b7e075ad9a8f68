"""Dense retrieval over a passage list with a sentence-transformers encoder (cosine).

:meth:`DenseIndex.add` can keep the passage embeddings on disk (``cache=True``): the file is
keyed by the encoder's identity and a hash of the embedded texts, written atomically as
safetensors under ``hyco_rag``'s cache folder (:func:`hyco_rag.models.cache.cache_dir`), so
a later process that indexes the same corpus with the same encoder reads it back instead of
re-embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hyco_rag.data.schema import Passage

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: Bump when the embedded text or the normalisation changes: old cache files stop matching.
INDEX_CACHE_VERSION = 1


@dataclass(frozen=True)
class RetrievedPassage:
    passage: Passage
    score: float


def _embedding_dimension(encoder: Any) -> int | None:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):  # newer name first
        method = getattr(encoder, name, None)
        if callable(method):
            return method()  # type: ignore[no-any-return]
    return None


def encoder_fingerprint(encoder: Any) -> str:
    """A cheap identity of a sentence encoder: its name, shapes and a digest of a few weights.

    Two encoders with the same name but other weights (a fine-tuned copy saved in the same
    folder) get different fingerprints, without hashing the whole model.
    """
    digest = hashlib.sha256()
    model = getattr(encoder, "auto_model", None)
    if model is None and hasattr(encoder, "__getitem__"):
        model = getattr(encoder[0], "auto_model", None)
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(encoder).__name__
    digest.update(
        json.dumps(
            {
                "class": type(encoder).__name__,
                "name": str(name),
                "max_seq_length": getattr(encoder, "max_seq_length", None),
                "dim": _embedding_dimension(encoder),
            },
            sort_keys=True,
        ).encode()
    )
    params = list(encoder.parameters()) if hasattr(encoder, "parameters") else []
    for tensor in (params[:1] + params[-1:]) if params else []:
        sample = tensor.detach().flatten()[:4096].float().cpu().contiguous()
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
    digest.update(str(len(params)).encode())
    return digest.hexdigest()[:32]


def _texts_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:32]


def index_cache_path(encoder: Any, texts: Sequence[str], root: Path | None = None) -> Path:
    """Where the embeddings of ``texts`` by ``encoder`` are cached."""
    if root is None:
        from hyco_rag.models.cache import cache_dir

        root = cache_dir()
    key = f"v{INDEX_CACHE_VERSION}-{encoder_fingerprint(encoder)}-{_texts_hash(texts)}"
    return Path(root) / "indexes" / f"{key}.safetensors"


def _save_embeddings(path: Path, embeddings: torch.Tensor, count: int) -> None:
    from hyco_rag.results import save_safetensors_atomic

    save_safetensors_atomic(
        {"embeddings": embeddings.contiguous()}, path, {"count": str(count), "version": str(INDEX_CACHE_VERSION)}
    )


def _load_embeddings(path: Path, count: int) -> torch.Tensor | None:
    """The cached embeddings, or ``None`` when the file is missing, unreadable or the wrong size."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            embeddings = handle.get_tensor("embeddings")
    except Exception as error:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
        logger.warning("ignoring unreadable index cache %s: %s", path, error)
        return None
    if embeddings.ndim != 2 or embeddings.shape[0] != count:
        logger.warning("ignoring index cache %s: %s rows for %d passages", path, tuple(embeddings.shape), count)
        return None
    return embeddings.float()


class MeanPoolingEncoder:
    """A sentence-transformers folder of the common shape (Transformer -> mean Pooling ->
    [Normalize]) run with plain ``transformers``: the same embeddings as ``SentenceTransformer``
    without importing sentence-transformers (and scikit-learn, ...), which costs seconds per start.

    Only :meth:`encode` (the part :class:`DenseIndex` calls) is provided.
    """

    def __init__(self, folder: str | os.PathLike[str], *, device: str | torch.device | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from hyco_rag.models import default_device

        folder = Path(folder)
        if not self.supports(folder):
            raise ValueError(f"{folder} is not a Transformer + mean-pooling sentence-transformers folder")
        settings = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.max_seq_length = int(settings.get("max_seq_length", 512))
        self.device = torch.device(device) if device is not None else default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.auto_model = AutoModel.from_pretrained(str(folder)).to(self.device).eval()
        self.normalize = any(m.get("type") == "sentence_transformers.models.Normalize" for m in self._modules(folder))

    @staticmethod
    def _modules(folder: Path) -> list[dict[str, Any]]:
        return list(json.loads((folder / "modules.json").read_text(encoding="utf-8")))

    @classmethod
    def supports(cls, folder: str | os.PathLike[str]) -> bool:
        """Whether ``folder`` is a sentence-transformers model this class reproduces exactly."""
        folder = Path(folder)
        try:
            types = [m.get("type") for m in cls._modules(folder)]
            pooling = next(m for m in cls._modules(folder) if m.get("type") == "sentence_transformers.models.Pooling")
            config = json.loads((folder / pooling.get("path", "1_Pooling") / "config.json").read_text(encoding="utf-8"))
            settings = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, StopIteration, AttributeError):
            return False
        modes = {k for k, v in config.items() if k.startswith("pooling_mode") and v}
        return (
            types[:2] == ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling"]
            and set(types[2:]) <= {"sentence_transformers.models.Normalize"}
            and modes == {"pooling_mode_mean_tokens"}
            and not settings.get("do_lower_case", False)
        )

    def get_embedding_dimension(self) -> int:
        return int(self.auto_model.config.hidden_size)

    def parameters(self) -> Any:
        return self.auto_model.parameters()

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        convert_to_tensor: bool = True,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
    ) -> torch.Tensor:
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths pad less
        out = torch.empty(len(texts), self.get_embedding_dimension())
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk], padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.auto_model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize or normalize_embeddings:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[chunk] = pooled.float().cpu()
        return out


class DenseIndex:
    """An in-memory embedding index: small corpora (demo, benchmarks), exact search."""

    def __init__(self, encoder: SentenceTransformer, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.passages: list[Passage] = []
        self._embeddings: torch.Tensor | None = None
        #: Whether the last :meth:`add` read its embeddings from the disk cache.
        self.cache_hit: bool | None = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | None = None, *, device: str | None = None, light: bool = True, **kwargs: Any
    ) -> DenseIndex:
        """An empty index over an encoder by name (default: the embedded all-MiniLM-L6-v2).

        ``light=True`` runs a mean-pooling sentence-transformers folder with plain transformers
        (:class:`MeanPoolingEncoder`, same embeddings, much faster to start); other encoders
        load with ``SentenceTransformer``.
        """
        from hyco_rag.models import load_sentence_encoder, resolve_sentence_encoder

        resolved = resolve_sentence_encoder(name_or_path)
        if light and MeanPoolingEncoder.supports(resolved):
            return cls(MeanPoolingEncoder(resolved, device=device), **kwargs)  # type: ignore[arg-type]
        return cls(load_sentence_encoder(name_or_path, device=device), **kwargs)

    def _embed(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        return (
            self.encoder.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
            .float()
            .cpu()
        )

    def add(self, passages: Sequence[Passage], progress: bool = False, *, cache: bool | str | os.PathLike[str] = False) -> None:
        """Embed and append passages (title prepended, as the encoder saw in training).

        ``cache=True`` reads/writes the embeddings under the hyco_rag cache folder (a path:
        under that folder instead), keyed by encoder identity and the passages' texts.
        """
        texts = [f"{p.title}: {p.text}" if p.title else p.text for p in passages]
        embeddings = None
        path = None
        if cache and texts:
            path = index_cache_path(self.encoder, texts, None if cache is True else Path(cache))
            embeddings = _load_embeddings(path, len(texts))
        self.cache_hit = embeddings is not None if path is not None else None
        if embeddings is None:
            embeddings = self._embed(texts, progress)
            if path is not None:
                try:
                    _save_embeddings(path, embeddings, len(texts))
                except OSError as error:  # a read-only cache folder costs speed, not the run
                    logger.warning("could not write the index cache %s: %s", path, error)
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
