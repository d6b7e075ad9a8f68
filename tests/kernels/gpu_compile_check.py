"""Compile every LoRA kernel variant to CUDA binaries without a GPU (run as a script).

Triton ships ``ptxas``, so ``triton.compile`` can lower a kernel all the way to a cubin for a
chosen architecture on a CPU-only machine.  That catches what the interpreter cannot: type
errors, unsupported constructs and register/shared-memory blow-ups of the real GPU code.  It
must run in a process without ``TRITON_INTERPRET`` (the kernels would be decorated as
interpreted functions), which is why ``test_gpu_compile.py`` launches it as a subprocess.

Prints one JSON object: ``{"compiled": n, "targets": [...]}``.  The whole matrix
(``--full --arch 80 90``, 144 binaries) takes about three minutes on two cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from hyco_rag.kernels import kernel_utils, lora_expand, lora_shrink

_ID_POINTERS = {"slot_ids_ptr", "sorted_token_ids_ptr", "active_slots_ptr", "slot_counts_ptr", "slot_starts_ptr"}
_FP32_POINTERS = {"out_ptr", "buf_ptr", "scale_ptr"}


def _signature(kernel: JITFunction, dtype: str, constexprs: dict[str, object]) -> dict[str, str]:
    signature = {}
    for name, param in zip(kernel.arg_names, kernel.params):
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name in _ID_POINTERS:
            signature[name] = "*i32"
        elif name in _FP32_POINTERS:
            signature[name] = "*fp32"
        elif name.endswith("_ptr") or "_ptr" in name:
            signature[name] = f"*{dtype}"
        elif name == "scale_value":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    missing = {n for n, p in zip(kernel.arg_names, kernel.params) if p.is_constexpr} - set(constexprs)
    if missing:
        raise KeyError(f"{kernel.__name__}: constexprs {sorted(missing)} not given")
    return signature


def _variants(full: bool) -> list[tuple[JITFunction, str, dict[str, object]]]:
    """(kernel, dtype, constexprs) combinations the launchers produce, with the default configs.

    ``full``: every dtype x rank block x split/scale option; otherwise one representative per
    kernel and dtype (bf16 at rank 64 with split-K / per-slot scales, fp16 at rank 2, fp32 with
    exact dots at rank 16), which keeps the test near ten seconds.
    """
    cpu = torch.device("cpu")
    cfg = {op: kernel_utils.launch_config(op, cpu) for op in kernel_utils.CONFIG_OPS}
    if full:
        combos = list(itertools.product(("bf16", "fp16", "fp32"), (2, 16, 64), (1, 4), (False, True)))
    else:
        combos = [("bf16", 64, 4, True), ("fp16", 2, 1, False), ("fp32", 16, 1, True)]
    variants: list[tuple[JITFunction, str, dict[str, object]]] = []
    for dtype, block_r, split_k, per_slot in combos:
        precision = "ieee" if dtype == "fp32" else "tf32"
        dot_block_r = max(16, block_r)
        variants += [
            (lora_shrink._lora_shrink_decode_kernel, dtype,
             {"BLOCK_K": cfg["shrink_decode"]["BLOCK_K"], "BLOCK_R": block_r, "SPLIT_K": split_k}),
            (lora_shrink._lora_shrink_kernel, dtype,
             {"BLOCK_M": cfg["shrink_prefill"]["BLOCK_M"], "BLOCK_K": cfg["shrink_prefill"]["BLOCK_K"],
              "BLOCK_R": dot_block_r, "SPLIT_K": split_k, "PRECISION": precision, "UPCAST": False}),
            (lora_expand._lora_expand_decode_kernel, dtype,
             {"BLOCK_N": cfg["expand_decode"]["BLOCK_N"], "BLOCK_R": block_r, "PER_SLOT_SCALE": per_slot}),
            (lora_expand._lora_expand_kernel, dtype,
             {"BLOCK_M": cfg["expand_prefill"]["BLOCK_M"], "BLOCK_N": cfg["expand_prefill"]["BLOCK_N"],
              "BLOCK_R": dot_block_r, "PER_SLOT_SCALE": per_slot, "PRECISION": precision, "UPCAST": False}),
        ]  # fmt: skip
    return variants


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("run without TRITON_INTERPRET", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="sm versions, e.g. 80 90")
    parser.add_argument("--full", action="store_true", help="every variant, not one per kernel and dtype")
    args = parser.parse_args()
    archs = args.arch
    compiled = 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for kernel, dtype, constexprs in _variants(args.full):
            source = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs), constexprs=constexprs)
            binary = triton.compile(source, target=target)
            if not binary.asm.get("cubin"):
                raise RuntimeError(f"{kernel.__name__} {dtype} {constexprs}: no cubin for sm_{arch}")
            compiled += 1
    print(json.dumps({"compiled": compiled, "targets": [f"sm_{a}" for a in archs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
