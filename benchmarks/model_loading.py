"""How long loading the embedded SmolLM2 takes: first load (GGUF dequantized + cached) vs later loads.

Each load runs in a fresh Python process against a fresh cache folder, so the second load
measures exactly what a user's next session pays. Prints a table and writes JSON to
benchmarks/results/.

    python benchmarks/model_loading.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile

from hyco_rag.results import format_table, write_results

# Imports happen before the clock starts: they cost the same in both cases.
_LOAD = """
import json, time
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from hyco_rag.models import load_causal_lm
t = time.perf_counter()
model, tokenizer = load_causal_lm(device="cpu")
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def timed_load(cache: str) -> float:
    env = {"HYCO_RAG_CACHE": cache, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="cached loads to time after the first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(cache)
        cached = [timed_load(cache) for _ in range(args.repeats)]
    rows = [{"load": "first (dequantize GGUF + write cache)", "seconds": first, "speedup": 1.0}]
    rows += [{"load": f"cached #{i + 1}", "seconds": s, "speedup": first / s} for i, s in enumerate(cached)]
    print(format_table(rows))
    print("results:", write_results("model_loading", rows, config={"model": "SmolLM2-135M-Instruct (embedded GGUF)"}))


if __name__ == "__main__":
    main()
