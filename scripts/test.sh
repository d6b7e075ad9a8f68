#!/usr/bin/env bash
# Set up the development environment and run everything CI checks: the test suite (core,
# integrations, Triton kernels under the interpreter), the example notebooks, and the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
venv=${HYCO_RAG_VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false NO_MKDOCS_2_WARNING=1
# Without a GPU the Triton kernels run under Triton's interpreter, which @triton.jit reads when a
# kernel or helper is decorated: set it for the whole process, before anything imports triton.
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
    export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
fi

"$venv/bin/python" -c "import hyco_rag" # the core imports on its own
# Lint, format and types first: seconds, and they name the problem before a long test run.
"$venv/bin/ruff" check hyco_rag kernels integrations tests benchmarks
"$venv/bin/ruff" format --check hyco_rag kernels integrations
MYPYPATH=integrations/langchain-hyco:integrations/llama-index-postprocessor-hyco:integrations/llama-index-retrievers-hyco:integrations/llama-index-llms-hyco \
    "$venv/bin/mypy" hyco_rag kernels integrations/langchain-hyco/langchain_hyco \
    integrations/llama-index-postprocessor-hyco/llama_index integrations/llama-index-retrievers-hyco/llama_index \
    integrations/llama-index-llms-hyco/llama_index
# One pytest run (one closing summary): unit tests, integration packages, example notebooks.
if [ "$#" -eq 0 ]; then
    for path in tests integrations examples; do [ -e "$path" ] && set -- "$@" "$path"; done
fi
"$venv/bin/python" -m pytest -q --durations=15 --nbmake --nbmake-timeout=900 "$@"
"$venv/bin/mkdocs" build --strict --quiet --site-dir "$(mktemp -d)"
