#!/usr/bin/env bash
# Every GPU benchmark of hyco-rag in one go (about 8 minutes on one GPU), JSON under benchmarks/results/.
#
#   benchmarks/gpu_suite.sh            # run every step (needs nvidia-smi and a CUDA build of torch)
#   benchmarks/gpu_suite.sh --dry-run  # print the steps' commands, run nothing (works anywhere)
#
# Steps (each under its own `timeout`; a failed step is recorded and the rest still run):
#   lora_kernels        benchmarks/lora_kernels.py --device cuda: per-row LoRA deltas, Triton vs eager/bmm/PEFT
#   translator_8b       the GPU section of benchmarks/parametric_qa.py (translator + hooked forward at the
#                       Llama-3-8B shape, random weights); parametric_qa.py has no CLI for that section alone,
#                       so it is called through run_gpu_section() (hyco_rag.evaluation.parametric)
#   compressor_cuda     benchmarks/compressor_throughput.py --device cuda (needs the shared SQuAD data)
#   serve_load_8b       benchmarks/serve_load.py --gpu-8b-shape (serve load at the 8B-shaped random-weights config)
# Opt-in (GPU_SUITE_STEPS=hybrid_qa; outside the 8 minutes):
#   hybrid_qa           benchmarks/hybrid_qa.py --device cuda (the hybrid view vs its parts and controls, SmolLM2)
#
# Exit status: 0 when every step passed, 1 when any failed (or timed out), 2 without a GPU.
# A summary (per step: command, exit status, seconds, log file) goes to
# benchmarks/results/gpu_suite-<UTC>.json and each step's output to benchmarks/results/gpu_suite-<UTC>/<step>.log.
#
# Environment: PYTHON (default .venv/bin/python, else python3), RESULTS_DIR (default benchmarks/results),
# GPU_SUITE_STEPS (comma-separated subset of the step names), <STEP>_TIMEOUT in seconds (e.g. LORA_KERNELS_TIMEOUT).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS_DIR="${RESULTS_DIR:-benchmarks/results}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
LOG_DIR="$RESULTS_DIR/gpu_suite-$STAMP"
SUMMARY="$RESULTS_DIR/gpu_suite-$STAMP.json"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# The translator section of parametric_qa.py at the 8B shape, written like every other result.
read -r -d '' TRANSLATOR_8B <<'PY'
import sys
from hyco_rag.results import write_results
try:  # where parametric_qa.py's GPU section lives now
    from hyco_rag.evaluation.parametric import run_gpu_section
    rows, gpu = run_gpu_section(True, model_layers=2)
except ImportError:  # older checkouts: the section inside benchmarks/parametric_qa.py
    import importlib.util
    spec = importlib.util.spec_from_file_location("parametric_qa", "benchmarks/parametric_qa.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["parametric_qa"] = bench
    spec.loader.exec_module(bench)
    rows, gpu = bench.run_gpu_section(bench.BenchmarkConfig())
if not gpu.get("run"):
    sys.exit(f"the GPU section did not run: {gpu.get('reason')}")
path = write_results("parametric_qa_gpu", rows, config={"gpu": gpu, "source": "parametric_qa GPU section (run_gpu_section)"}, results_dir=sys.argv[1])
for row in rows:
    print(row)
print(f"wrote {path}")
PY

STEP_NAMES=(lora_kernels translator_8b compressor_cuda serve_load_8b)
declare -A COMMANDS TIMEOUTS
COMMANDS[lora_kernels]="$PYTHON benchmarks/lora_kernels.py --device cuda --out $RESULTS_DIR/lora_kernels_cuda_$STAMP.json"
TIMEOUTS[lora_kernels]="${LORA_KERNELS_TIMEOUT:-120}"
COMMANDS[translator_8b]="$PYTHON -c \"\$TRANSLATOR_8B\" $RESULTS_DIR"
TIMEOUTS[translator_8b]="${TRANSLATOR_8B_TIMEOUT:-90}"
COMMANDS[compressor_cuda]="$PYTHON benchmarks/compressor_throughput.py --device cuda --questions 400 --results-dir $RESULTS_DIR"
TIMEOUTS[compressor_cuda]="${COMPRESSOR_CUDA_TIMEOUT:-120}"
COMMANDS[serve_load_8b]="$PYTHON benchmarks/serve_load.py --gpu-8b-shape"
TIMEOUTS[serve_load_8b]="${SERVE_LOAD_8B_TIMEOUT:-150}"
COMMANDS[hybrid_qa]="$PYTHON benchmarks/hybrid_qa.py --device cuda --ablation-questions 0"
TIMEOUTS[hybrid_qa]="${HYBRID_QA_TIMEOUT:-300}"

SELECTED=("${STEP_NAMES[@]}")
if [[ -n "${GPU_SUITE_STEPS:-}" ]]; then
    IFS=',' read -r -a SELECTED <<< "$GPU_SUITE_STEPS"
    for step in "${SELECTED[@]}"; do
        if [[ -z "${COMMANDS[$step]+x}" ]]; then
            echo "gpu_suite.sh: unknown step '$step' in GPU_SUITE_STEPS; steps: ${STEP_NAMES[*]}" >&2
            exit 2
        fi
    done
fi

# Why a step cannot run at all (printed and recorded as its failure), or nothing.
precheck() {
    case "$1" in
        serve_load_8b)
            if [[ ! -f benchmarks/serve_load.py ]]; then echo "benchmarks/serve_load.py does not exist"
            elif ! grep -q -- "--gpu-8b-shape" benchmarks/serve_load.py; then echo "benchmarks/serve_load.py has no --gpu-8b-shape option"
            fi ;;
    esac
}

if [[ $DRY_RUN -eq 1 ]]; then
    echo "# gpu_suite.sh --dry-run: the commands a real run executes (nothing runs)"
    for step in "${SELECTED[@]}"; do
        why="$(precheck "$step")"
        echo "[$step] timeout ${TIMEOUTS[$step]} ${COMMANDS[$step]}${why:+    # would fail: $why}"
    done
    echo "# summary: $SUMMARY"
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_suite.sh: no NVIDIA GPU here (nvidia-smi not found); run it on a GPU machine, or use --dry-run to see the commands" >&2
    exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_suite.sh: nvidia-smi found but it lists no GPU (nvidia-smi -L failed); nothing run" >&2
    exit 2
fi

export TRANSLATOR_8B
mkdir -p "$LOG_DIR"
nvidia-smi -L | tee "$LOG_DIR/nvidia-smi.txt"
FAILED=0
RECORDS=()
SUITE_START=$SECONDS
for step in "${SELECTED[@]}"; do
    log="$LOG_DIR/$step.log"
    why="$(precheck "$step")"
    start=$SECONDS
    if [[ -n "$why" ]]; then
        echo "== $step: FAILED before starting: $why" | tee "$log"
        rc=127
    else
        echo "== $step (timeout ${TIMEOUTS[$step]} s): ${COMMANDS[$step]}"
        timeout --kill-after=10 "${TIMEOUTS[$step]}" bash -c "${COMMANDS[$step]}" > "$log" 2>&1
        rc=$?
        tail -n 5 "$log" | sed 's/^/   /'
    fi
    seconds=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then status=passed
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then status=timed_out
    else status=failed
    fi
    [[ $rc -ne 0 ]] && FAILED=$((FAILED + 1))
    echo "== $step: $status (exit $rc, ${seconds} s)"
    RECORDS+=("$step"$'\t'"$status"$'\t'"$rc"$'\t'"$seconds"$'\t'"${TIMEOUTS[$step]}"$'\t'"$log"$'\t'"$why"$'\t'"${COMMANDS[$step]}")
done

printf '%s\n' "${RECORDS[@]}" | "$PYTHON" -c '
import json, sys
steps = []
for line in sys.stdin.read().splitlines():
    name, status, rc, seconds, timeout, log, why, command = line.split("\t", 7)
    step = {"step": name, "status": status, "exit_code": int(rc), "seconds": int(seconds), "timeout_s": int(timeout), "log": log, "command": command}
    if why:
        step["reason"] = why
    steps.append(step)
summary = {"benchmark": "gpu_suite", "created": sys.argv[2], "total_seconds": int(sys.argv[3]), "failed": sum(s["status"] != "passed" for s in steps), "steps": steps}
with open(sys.argv[1], "w") as handle:
    json.dump(summary, handle, indent=2)
' "$SUMMARY" "$STAMP" "$((SECONDS - SUITE_START))" || echo "gpu_suite.sh: could not write $SUMMARY" >&2
echo "summary: $SUMMARY ($FAILED of ${#SELECTED[@]} steps failed, $((SECONDS - SUITE_START)) s)"
[[ $FAILED -eq 0 ]]
