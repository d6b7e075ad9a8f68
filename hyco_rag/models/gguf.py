"""Turn a GGUF file into a cached, plain safetensors model folder.

transformers can read GGUF (through the ``gguf`` package) but dequantizes every tensor on
each load, about 20 s for SmolLM2-135M on a 2-core CPU. We do it once, save the already
dequantized fp32 weights as a regular HF folder keyed by the GGUF's content hash, and load
that folder afterwards (a memory-mapped safetensors read).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from pathlib import Path

from hyco_rag.models.cache import cache_dir, publish_dir_atomically

logger = logging.getLogger(__name__)

_HASH_CHUNK = 8 << 20
_COMPLETE_MARKER = "hyco_rag_gguf_source.txt"


def file_sha256(path: Path) -> str:
    """Content hash of ``path``, read in chunks so large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


#: (resolved path, size, mtime_ns) of a GGUF file -> its content hash: hashing 98 MB costs
#: about half a second, and every name resolution (each chat call, each engine lookup) needs it.
_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def _content_hash(gguf_file: Path) -> str:
    stat = gguf_file.stat()
    key = (str(gguf_file), stat.st_size, stat.st_mtime_ns)
    with _HASHES_LOCK:
        digest = _HASHES.get(key)
    if digest is None:
        digest = file_sha256(gguf_file)
        with _HASHES_LOCK:
            _HASHES[key] = digest
    return digest


def gguf_cache_dir(gguf_file: Path) -> Path:
    """Where the dequantized copy of ``gguf_file`` lives (it may not exist yet).

    The content hash is computed once per (path, size, mtime) in a process.
    """
    return cache_dir() / "gguf" / f"{gguf_file.stem}-{_content_hash(gguf_file.resolve())[:16]}"


def dequantized_gguf_dir(gguf_file: str | Path) -> Path:
    """Folder with the dequantized model and tokenizer of ``gguf_file``, built on first use."""
    gguf_file = Path(gguf_file).resolve()
    target = gguf_cache_dir(gguf_file)
    if (target / _COMPLETE_MARKER).is_file():
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Dequantizing %s once; later loads read %s", gguf_file.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The weights are already plain fp32 tensors; only the quantizer bookkeeping blocks
    # save_pretrained ("quantized with gguf and is not serializable").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache entry is world-readable
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(f"{gguf_file}\n", encoding="utf-8")
        publish_dir_atomically(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
