"""Copy hyco-rag's cached SmolLM2 safetensors folder into a form transformers 4.44 loads.

The folder that transformers 5 saved differs from what 4.44 expects in three places; each edit
below fixes one, and each was checked to matter (docs/benchmarks.md):

1. ``tokenizer_config.json``: 5.x writes ``"tokenizer_class": "TokenizersBackend"``, unknown
   to 4.44; ``GPT2TokenizerFast`` is the class SmolLM2 ships with.
2. ``tokenizer.json``: 5.x stores BPE ``merges`` as ``[a, b]`` pairs and adds ``ignore_merges``;
   the tokenizers release that 4.44 pins rejects both, so merges become ``"a b"`` strings.
3. ``config.json``: 5.x nests ``rope_theta`` inside ``rope_parameters``; 4.44 reads a top-level
   ``rope_theta`` and silently falls back to 10000 without it (wrong positions, garbage text).

Usage: python prepare_smollm2_tf4.py SOURCE_DIR TARGET_DIR
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _write_json(path: Path, payload: object) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, ensure_ascii=False, indent=2)
    os.replace(temporary, path)


def prepare(source: Path, target: Path) -> None:
    if not (source / "model.safetensors").is_file():
        raise FileNotFoundError(f"{source} holds no model.safetensors; is it the cached SmolLM2 folder?")
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)

    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "GPT2TokenizerFast"
    tokenizer_config.pop("backend", None)
    chat_template = target / "chat_template.jinja"
    if chat_template.is_file() and "chat_template" not in tokenizer_config:
        tokenizer_config["chat_template"] = chat_template.read_text(encoding="utf-8")  # 4.44 reads it from here
    _write_json(target / "tokenizer_config.json", tokenizer_config)

    tokenizer = json.loads((target / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer.get("model", {})
    model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    model.pop("ignore_merges", None)
    _write_json(target / "tokenizer.json", tokenizer)

    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if "rope_theta" not in config:
        raise ValueError(f"{source}/config.json has no rope_theta; cannot make it safe for transformers 4.44")
    _write_json(target / "config.json", config)
    (target / ".hyco_peer_ok").write_text(f"prepared from {source}\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: prepare_smollm2_tf4.py SOURCE_DIR TARGET_DIR")
    prepare(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"prepared {sys.argv[2]}")
