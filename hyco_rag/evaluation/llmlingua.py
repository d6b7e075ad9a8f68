"""Client for the LongLLMLingua peer, which runs in its own venv as a subprocess.

llmlingua 0.2.2 needs transformers 4.44 (newer releases reject the legacy tuple KV cache it
passes), while hyco-rag runs on transformers 5, so the peer cannot share our process.
``scripts/peers/setup_llmlingua.sh`` builds the venv and a SmolLM2 folder that 4.44 loads;
``scripts/peers/llmlingua_runner.py`` does the compression. This module writes the requests as
JSONL, runs the runner, and reads its outputs back. The runner's output file doubles as a
cache keyed by request content, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Bump when the runner's llmlingua settings change, so cached outputs are not reused.
SETTINGS_VERSION = "longllmlingua-readme-v1"
_REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = _REPO_ROOT / "scripts" / "peers" / "llmlingua_runner.py"
SETUP_SCRIPT = _REPO_ROOT / "scripts" / "peers" / "setup_llmlingua.sh"


def peers_dir() -> Path:
    """Where peer environments live: ``$HYCO_RAG_PEERS`` or ``~/.cache/hyco_rag/peers``."""
    return Path(os.environ.get("HYCO_RAG_PEERS", "~/.cache/hyco_rag/peers")).expanduser()


@dataclass
class LLMLinguaPeerConfig:
    """Where the peer venv and its SmolLM2 folder are, and how to run it."""

    python: str | None = None  # default: <peers>/llmlingua-venv/bin/python
    model: str | None = None  # default: <peers>/smollm2-135m-instruct-tf4
    threads: int = 2
    cache_path: str | None = None  # runner output JSONL reused across runs; None = a temporary file
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def python_path(self) -> Path:
        return Path(self.python) if self.python else peers_dir() / "llmlingua-venv" / "bin" / "python"

    @property
    def model_path(self) -> Path:
        return Path(self.model) if self.model else peers_dir() / "smollm2-135m-instruct-tf4"


@dataclass
class PeerOutput:
    documents: list[str]
    seconds: float
    compressed_tokens: int


class LLMLinguaPeer:
    """LongLLMLingua (llmlingua 0.2.2, SmolLM2 as the small LM) behind a subprocess."""

    name = "llmlingua"

    def __init__(self, config: LLMLinguaPeerConfig | None = None) -> None:
        self.config = config or LLMLinguaPeerConfig()

    def unavailable_reason(self) -> str | None:
        """None when the peer can run; else what is missing and how to fix it."""
        if not RUNNER.is_file():
            return f"the runner {RUNNER} is missing (the peer needs a source checkout)"
        if not self.config.python_path.is_file():
            return f"no peer venv at {self.config.python_path}; run `bash {SETUP_SCRIPT}`"
        if not (self.config.model_path / ".hyco_peer_ok").is_file():
            return f"no prepared SmolLM2 folder at {self.config.model_path}; run `bash {SETUP_SCRIPT}`"
        return None

    @staticmethod
    def key(query: str, documents: Sequence[str], target_tokens: int) -> str:
        payload = json.dumps([SETTINGS_VERSION, query, list(documents), int(target_tokens)], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def compress_many(self, requests: Sequence[tuple[str, Sequence[str], int]]) -> list[PeerOutput]:
        """Compress ``(query, documents, target_tokens)`` requests; one output per request."""
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(f"LongLLMLingua peer unavailable: {reason}")
        keys = [self.key(q, d, t) for q, d, t in requests]
        if self.config.cache_path:
            output = Path(self.config.cache_path)
            output.parent.mkdir(parents=True, exist_ok=True)
            cleanup = None
        else:
            handle, name = tempfile.mkstemp(prefix="llmlingua-out-", suffix=".jsonl")
            os.close(handle)
            output = cleanup = Path(name)
        handle, input_name = tempfile.mkstemp(prefix="llmlingua-in-", suffix=".jsonl")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                seen: set[str] = set()
                for key, (query, documents, target) in zip(keys, requests):
                    if key in seen:
                        continue
                    seen.add(key)
                    record = {"key": key, "query": query, "documents": list(documents), "target_tokens": int(target)}
                    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            command = [
                str(self.config.python_path),
                str(RUNNER),
                "--model",
                str(self.config.model_path),
                "--input",
                input_name,
                "--output",
                str(output),
                "--threads",
                str(self.config.threads),
            ]
            logger.info("running LongLLMLingua peer on %d requests", len(seen))
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
            completed = subprocess.run(
                command, env=env, stderr=sys.stderr, stdout=subprocess.PIPE, text=True, timeout=self.config.timeout_s, check=False
            )
            if completed.returncode != 0:
                raise RuntimeError(f"LongLLMLingua runner failed with exit code {completed.returncode} (see its stderr above)")
            results: dict[str, dict] = {}
            errors: dict[str, str] = {}
            with open(output, encoding="utf-8") as stream:
                for line in stream:
                    if line.strip():
                        record = json.loads(line)
                        if "error" in record:
                            errors[record["key"]] = record["error"]
                        else:
                            results[record["key"]] = record
                            errors.pop(record["key"], None)
        finally:
            Path(input_name).unlink(missing_ok=True)
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)
        missing = [k for k in keys if k not in results]
        if missing:
            sample = errors.get(missing[0], "no output written")
            raise RuntimeError(f"LongLLMLingua produced no output for {len(missing)} of {len(keys)} requests; first: {sample}")
        return [
            PeerOutput(results[k]["documents"], float(results[k]["seconds"]), int(results[k]["compressed_tokens"])) for k in keys
        ]
