"""Shared pieces of the Triton LoRA kernels: jit helpers and launch configurations.

This module imports Triton unconditionally, so only the Triton op modules
(``lora_shrink``, ``lora_expand``) import it, and they are themselves imported lazily by
``lora_ops`` on the first Triton dispatch.  Two reasons: the package must import on machines
without Triton, and ``@triton.jit`` decides *at decoration time* whether a kernel is compiled
or run by the CPU interpreter (``TRITON_INTERPRET=1``); deferring the decoration lets a test
session switch the interpreter on before any kernel exists.

Launch configurations come from ``configs/<device name>.json`` (or the folder named by
``HYCO_RAG_LORA_CONFIG_DIR``), one file per GPU model, written by whoever tunes on that GPU.
Without a file the heuristics below apply; they only look at grid occupancy, because every
shape these kernels see is memory-bound (rank <= 64).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

logger = logging.getLogger(__name__)

#: Slices (target modules sharing one input) handled by one launch; more are launched in groups.
MAX_SLICES_PER_LAUNCH = 3
#: Environment variable naming a folder of per-GPU launch-config JSON files.
CONFIG_DIR_ENV = "HYCO_RAG_LORA_CONFIG_DIR"
#: Config keys: one per kernel, plus the decode/prefill switch.
CONFIG_OPS = ("shrink_decode", "shrink_prefill", "expand_decode", "expand_prefill")
_DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Token count up to which the per-token (decode) kernels run instead of the slot-grouped ones.
DEFAULT_DECODE_MAX_TOKENS = 64
#: Streaming multiprocessors assumed for the interpreter (keeps interpreted grids small).
_INTERPRETER_SM_COUNT = 2


@triton.jit
def select_slice(slice_id, v0, v1, v2):
    """Pick the per-slice argument (pointer or int) of slice ``slice_id`` (0, 1 or 2).

    Slices are passed as separate arguments instead of a device table of pointers, so a
    launch needs no host-to-device copy and no pointer cache keyed on ``data_ptr``.
    """
    if slice_id == 0:
        value = v0
    elif slice_id == 1:
        value = v1
    else:
        value = v2
    return value


@triton.jit
def tile_dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` with fp32 accumulation.

    ``UPCAST`` multiplies fp32 copies instead: Triton's interpreter keeps bfloat16 as raw
    ``uint16`` and its ``tl.dot`` multiplies the bit patterns (triton-lang/triton#11584, not
    supported upstream), so the host sets it only for bfloat16 under the interpreter.  The
    result is the same as the GPU's, since products of bfloat16 values are exact in fp32.
    """
    if UPCAST:
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        result = tl.dot(a, b, input_precision=PRECISION)
    return result


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    if hasattr(triton, "knobs"):  # Triton >= 3.3 reads its settings through knobs
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def config_file_name(device_name: str) -> str:
    """File name of the launch configs of a GPU, e.g. ``NVIDIA_H100_80GB_HBM3.json``."""
    return "".join(c if c.isalnum() else "_" for c in device_name) + ".json"


@functools.cache
def _load_device_configs(config_dir: str, device_name: str) -> dict[str, Any]:
    """Read (once) the JSON launch configs of one GPU model; ``{}`` when there is none."""
    path = Path(config_dir) / config_file_name(device_name)
    if not path.is_file():
        logger.info("no tuned LoRA launch configs at %s; using the built-in heuristics", path)
        return {}
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    unknown = set(data) - set(CONFIG_OPS) - {"decode_max_tokens"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {CONFIG_OPS} or decode_max_tokens")
    logger.info("LoRA launch configs loaded from %s", path)
    return data


def clear_config_cache() -> None:
    """Forget loaded config files (for tuners that rewrite them within one process)."""
    _load_device_configs.cache_clear()


@functools.cache
def _device_properties(device: torch.device) -> tuple[str, int]:
    """(name, SM count) of a CUDA device; a small fake pair for the interpreter on CPU."""
    if device.type != "cuda":
        return ("interpreter", _INTERPRETER_SM_COUNT)
    props = torch.cuda.get_device_properties(device)
    return (props.name, props.multi_processor_count)


def device_configs(device: torch.device) -> dict[str, Any]:
    """The tuned configs of ``device``'s GPU model (``{}`` when none were written)."""
    name, _ = _device_properties(device)
    config_dir = os.environ.get(CONFIG_DIR_ENV, str(_DEFAULT_CONFIG_DIR))
    return _load_device_configs(config_dir, name)


def decode_max_tokens(device: torch.device) -> int:
    """Token count up to which the per-token decode kernels are used."""
    return int(device_configs(device).get("decode_max_tokens", DEFAULT_DECODE_MAX_TOKENS))


def dot_args(dtype: torch.dtype) -> dict[str, object]:
    """``PRECISION`` / ``UPCAST`` constexprs of :func:`tile_dot` for tiles of ``dtype``.

    fp32 tiles are multiplied exactly ("ieee") rather than in TF32, matching torch's default
    for fp32 matmuls; 16-bit tiles ignore the precision setting.
    """
    return {
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        "UPCAST": dtype == torch.bfloat16 and interpreter_enabled(),
    }


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (and >= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def launch_config(op: str, device: torch.device) -> dict[str, int]:
    """Launch parameters of kernel ``op``: the tuned file's keys over the built-in defaults."""
    if op not in CONFIG_OPS:
        raise ValueError(f"unknown kernel {op!r}; expected one of {CONFIG_OPS}")
    defaults: dict[str, dict[str, int]] = {
        "shrink_decode": {"BLOCK_K": 256, "num_warps": 4, "num_stages": 2},
        "shrink_prefill": {"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},
        "expand_decode": {"BLOCK_N": 128, "num_warps": 4, "num_stages": 2},
        "expand_prefill": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2},
    }
    return {**defaults[op], **device_configs(device).get(op, {})}


def split_k(config: dict[str, int], device: torch.device, *, programs: int, k: int) -> int:
    """K-splits of a shrink launch of ``programs`` programs: the tuned value, or enough
    splits for about two waves of SMs (never more than K has blocks).

    Splitting matters at decode, where a 64-row batch gives only 64 programs per slice.
    """
    if "SPLIT_K" in config:
        return int(config["SPLIT_K"])
    _, sm_count = _device_properties(device)
    split, max_split = 1, max(1, triton.cdiv(k, config["BLOCK_K"]))
    while programs * split < 2 * sm_count and split * 2 <= max_split:
        split *= 2
    return split
