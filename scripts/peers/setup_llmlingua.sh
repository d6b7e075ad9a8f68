#!/usr/bin/env bash
# Build the LongLLMLingua peer environment for benchmarks/compression_qa.py.
#
# Why a separate venv: llmlingua 0.2.2 passes the legacy tuple KV cache that transformers >= 4.57
# rejects, so the peer needs transformers 4.44.2 while hyco-rag itself runs on transformers 5.x.
# The benchmark calls scripts/peers/llmlingua_runner.py with this venv's python as a subprocess.
#
# What it does (idempotent; re-running only repairs what is missing):
#   1. a venv at $HYCO_RAG_PEERS/llmlingua-venv (default ~/.cache/hyco_rag/peers);
#   2. llmlingua==0.2.2, transformers==4.44.2, tiktoken, accelerate and the CPU torch
#      (a local CPU wheel from pip's find-links is preferred; set TORCH_SPEC to override);
#   3. a copy of hyco-rag's cached SmolLM2 safetensors folder (hyco_rag.models.resolve_causal_lm())
#      at $HYCO_RAG_PEERS/smollm2-135m-instruct-tf4, with the three edits transformers 4.44 needs
#      (see docs/benchmarks.md): tokenizer_class, merges as "a b" strings, top-level rope_theta;
#   4. a smoke test: greedy "The capital of France is" must contain "Paris".
#
# Usage: bash scripts/peers/setup_llmlingua.sh            (HYCO_PYTHON = the hyco-rag python)
set -euo pipefail

PEERS="${HYCO_RAG_PEERS:-$HOME/.cache/hyco_rag/peers}"
VENV="$PEERS/llmlingua-venv"
MODEL_DIR="$PEERS/smollm2-135m-instruct-tf4"
HYCO_PYTHON="${HYCO_PYTHON:-$(command -v python)}"
BASE_PYTHON="${PEER_BASE_PYTHON:-$(command -v python3)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1

mkdir -p "$PEERS"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[peers] creating $VENV"
    "$BASE_PYTHON" -m venv "$VENV"
fi

if ! "$VENV/bin/python" -c "import llmlingua, transformers, tiktoken, torch; assert transformers.__version__ == '4.44.2'" 2>/dev/null; then
    # CPU torch: pip's find-links may hold a +cpu wheel; otherwise the PyTorch CPU index.
    if [[ -z "${TORCH_SPEC:-}" ]]; then
        TORCH_SPEC="torch"
        CPU_WHEEL="$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -n1 || true)"
        if [[ -n "$CPU_WHEEL" ]]; then
            TORCH_SPEC="$CPU_WHEEL"
        else
            export PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:-} https://download.pytorch.org/whl/cpu"
        fi
    fi
    echo "[peers] installing llmlingua==0.2.2 transformers==4.44.2 (torch: $TORCH_SPEC)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install --quiet "llmlingua==0.2.2" "transformers==4.44.2" tiktoken accelerate
fi

if [[ ! -f "$MODEL_DIR/.hyco_peer_ok" ]]; then
    echo "[peers] preparing SmolLM2 folder for transformers 4.44 at $MODEL_DIR"
    SOURCE_DIR="$("$HYCO_PYTHON" -c 'from hyco_rag.models import resolve_causal_lm; print(resolve_causal_lm())')"
    "$HYCO_PYTHON" "$HERE/prepare_smollm2_tf4.py" "$SOURCE_DIR" "$MODEL_DIR"
fi

echo "[peers] smoke test"
"$VENV/bin/python" - "$MODEL_DIR" <<'PY'
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
ids = tokenizer("The capital of France is", return_tensors="pt")
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
text = tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
print(f"[peers] greedy continuation: {text!r}")
if "Paris" not in text:
    sys.exit("[peers] smoke test failed: the peer SmolLM2 does not answer 'Paris' (check the rope_theta edit)")
PY
echo "[peers] ready: python=$VENV/bin/python model=$MODEL_DIR"
