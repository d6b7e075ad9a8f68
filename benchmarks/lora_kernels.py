"""Per-row LoRA deltas on MLP projections: base matmul vs four ways of adding the deltas.

Methods, each timed as the whole projection (base matmul + deltas) on the same inputs:

* ``base``          the base matmul alone (gate and up fused into one weight, as servers do);
* ``eager_shared``  eager torch with ONE adapter shared by every row (the cheapest eager case);
* ``bmm_gather``    per-row adapters gathered (``A[slot_ids]``, ``B[slot_ids]``) and ``torch.bmm``;
* ``peft_loop``     a faithful re-implementation of PEFT's mixed-batch forward
  (``LoraLayer._mixed_batch_forward`` with ``adapter_names``): one Python-level sub-batch per
  distinct adapter, ``lora_B(lora_A(x[idx])) * scaling`` added at those rows.  Re-implemented
  here (same operations, same order) so the benchmark does not depend on peft;
* ``ours``          ``hyco_rag.kernels.add_lora`` (Triton on CUDA, the torch path on CPU), with
  the step's ``LoRASlotMetadata`` built once outside the timed region, as a server builds it
  once per step for every layer.  ``meta_build`` times that per-step cost on its own.

Scenarios: decode with one request (T=1), decode with 64 requests each with its own adapter
(T=64), and a prefill of 8 requests x 512 tokens with 8 adapters (T=4096).  ``delta_only``
times ``add_lora`` without the base matmul and reports its achieved bandwidth (bytes it must
move / time) against the measured device-to-device copy bandwidth.

On CUDA the full grid runs in bf16 (Llama-3-8B and SmolLM2-135M MLP shapes, ranks 2/8/16).
``--device cpu --quick`` runs SmolLM2 shapes in fp32 with a 256-token prefill in about a minute,
timing the torch paths only (the Triton kernels need CUDA).

    python benchmarks/lora_kernels.py                      # CUDA if available, full grid
    python benchmarks/lora_kernels.py --device cpu --quick

Writes ``benchmarks/results/lora_kernels_<device>_<timestamp>.json`` atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from hyco_rag.kernels import LoRASlotMetadata, add_lora, resolve_backend

logger = logging.getLogger("lora_kernels")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: (model, module, in_features, out_features per slice)
SHAPES: list[tuple[str, str, int, tuple[int, ...]]] = [
    ("llama3-8b", "gate_up", 4096, (14336, 14336)),
    ("llama3-8b", "down", 14336, (4096,)),
    ("smollm2-135m", "gate_up", 576, (1536, 1536)),
    ("smollm2-135m", "down", 1536, (576,)),
]
RANKS = (2, 8, 16)
#: (name, tokens, requests); every request has its own adapter and an equal share of tokens.
SCENARIOS = [("decode", 1, 1), ("decode", 64, 64), ("prefill", 4096, 8)]
QUICK_SCENARIOS = [("decode", 1, 1), ("decode", 64, 64), ("prefill", 256, 4)]
METHODS = ("base", "eager_shared", "bmm_gather", "peft_loop", "ours")
SCALE = 2.0


@dataclass
class Row:
    """One timed measurement."""

    model: str
    module: str
    in_features: int
    out_features: int
    slices: int
    rank: int
    scenario: str
    tokens: int
    adapters: int
    method: str
    median_us: float
    overhead_pct: float | None = None
    bytes_moved: int | None = None
    achieved_gbps: float | None = None
    pct_of_copy_bw: float | None = None


def _time_us(fn: Callable[[], object], min_run_time: float) -> float:
    """Median microseconds per call (``torch.utils.benchmark`` syncs CUDA around the blocks)."""
    fn()  # warm-up: compiles kernels, fills caches
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def copy_bandwidth_gbps(device: torch.device, min_run_time: float) -> float:
    """Measured device copy bandwidth (read + write bytes / time), the practical peak."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(numel, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    us = _time_us(lambda: dst.copy_(src), min_run_time)
    return 2 * src.numel() * src.element_size() / (us * 1e-6) / 1e9


def _peft_mixed_batch(
    result: torch.Tensor,
    x: torch.Tensor,
    adapter_names: list[str],
    lora_a: dict[str, list[torch.Tensor]],
    lora_b: dict[str, list[torch.Tensor]],
    scaling: float,
    offsets: list[int],
) -> torch.Tensor:
    """PEFT's ``_mixed_batch_forward`` on ``x`` of shape ``[requests, seq, K]`` (one slice per
    PEFT-wrapped linear; gate and up are two wrapped linears, so the loop runs per slice)."""
    unique_adapters = set(adapter_names)
    sub_batch_indices_list = [
        [index for index, item in enumerate(adapter_names) if item == adapter] for adapter in unique_adapters
    ]
    for s in range(len(offsets) - 1):
        out = result[..., offsets[s] : offsets[s + 1]]
        for i, active_adapter in enumerate(unique_adapters):
            if active_adapter == "__base__":
                continue
            sub_batch = x[sub_batch_indices_list[i]].to(lora_a[active_adapter][s].dtype)
            lora_a_out = F.linear(sub_batch, lora_a[active_adapter][s])
            lora_output = F.linear(lora_a_out, lora_b[active_adapter][s]) * scaling
            out[sub_batch_indices_list[i]] += lora_output.to(result.dtype)
    return result


def bench_case(
    model: str,
    module: str,
    in_features: int,
    out_features: tuple[int, ...],
    rank: int,
    scenario: tuple[str, int, int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    min_run_time: float,
    copy_gbps: float,
) -> list[Row]:
    """Time every method on one shape / rank / scenario."""
    name, tokens, requests = scenario
    slots = requests
    seq = tokens // requests
    n_total = sum(out_features)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(device=device, dtype=dtype)

    x = randn(tokens, in_features, std=1.0)
    weight = randn(n_total, in_features, std=in_features**-0.5)
    lora_a = [randn(slots, rank, in_features, std=in_features**-0.5) for _ in out_features]
    lora_b = [randn(slots, n, rank, std=rank**-0.5) for n in out_features]
    slot_ids = torch.arange(requests, dtype=torch.int32).repeat_interleave(seq).to(device)
    offsets = [0]
    for n in out_features:
        offsets.append(offsets[-1] + n)
    meta = LoRASlotMetadata.make(slot_ids)

    def base() -> torch.Tensor:
        return F.linear(x, weight)

    def eager_shared() -> torch.Tensor:
        y = F.linear(x, weight)
        for s, (a, b) in enumerate(zip(lora_a, lora_b)):
            y[:, offsets[s] : offsets[s + 1]] += SCALE * F.linear(F.linear(x, a[0]), b[0])
        return y

    def bmm_gather() -> torch.Tensor:
        y = F.linear(x, weight)
        rows = slot_ids.long()
        for s, (a, b) in enumerate(zip(lora_a, lora_b)):
            h = torch.bmm(a[rows], x.unsqueeze(-1))  # [T, r, 1]
            y[:, offsets[s] : offsets[s + 1]] += SCALE * torch.bmm(b[rows], h).squeeze(-1)
        return y

    names = [f"request{i}" for i in range(requests)]
    peft_a = {n: [a[i] for a in lora_a] for i, n in enumerate(names)}
    peft_b = {n: [b[i] for b in lora_b] for i, n in enumerate(names)}
    x_batched = x.view(requests, seq, in_features)

    def peft_loop() -> torch.Tensor:
        result = F.linear(x_batched, weight)
        return _peft_mixed_batch(result, x_batched, names, peft_a, peft_b, SCALE, offsets)

    def ours() -> torch.Tensor:
        return add_lora(F.linear(x, weight), x, lora_a, lora_b, slot_ids, SCALE, meta=meta)

    y_delta = F.linear(x, weight)

    def delta_only() -> torch.Tensor:
        return add_lora(y_delta, x, lora_a, lora_b, slot_ids, SCALE, meta=meta)

    methods = {"base": base, "eager_shared": eager_shared, "bmm_gather": bmm_gather, "peft_loop": peft_loop,
               "ours": ours}  # fmt: skip
    common = dict(model=model, module=module, in_features=in_features, out_features=n_total,
                  slices=len(out_features), rank=rank, scenario=name, tokens=tokens, adapters=slots)  # fmt: skip
    rows: list[Row] = []
    base_us = 0.0
    with torch.inference_mode():
        for method, fn in methods.items():
            us = _time_us(fn, min_run_time)
            base_us = us if method == "base" else base_us
            overhead = None if method == "base" else 100.0 * (us - base_us) / base_us
            rows.append(Row(**common, method=method, median_us=us, overhead_pct=overhead))
        el = x.element_size()
        moved = (
            len(out_features) * tokens * in_features * el  # x, read once per slice
            + len(out_features) * slots * rank * in_features * el  # A of the active slots
            + slots * n_total * rank * el  # B of the active slots
            + 2 * len(out_features) * tokens * rank * 4  # fp32 intermediate, written and read
            + 2 * tokens * n_total * el  # y, read and written
        )
        us = _time_us(delta_only, min_run_time)
        gbps = moved / (us * 1e-6) / 1e9
        rows.append(Row(**common, method="delta_only", median_us=us, bytes_moved=moved, achieved_gbps=gbps,
                        pct_of_copy_bw=100.0 * gbps / copy_gbps))  # fmt: skip
        us = _time_us(lambda: LoRASlotMetadata.make(slot_ids), min_run_time)
        rows.append(Row(**common, method="meta_build", median_us=us))
    return rows


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def print_table(rows: list[Row]) -> None:
    """One line per shape / rank / scenario: base time, each method's overhead, delta bandwidth."""
    header = (
        f"{'model':<13}{'module':<8}{'r':>3}{'T':>6}{'ad':>4}{'base us':>10}"
        + "".join(f"{m:>14}" for m in METHODS[1:])
        + f"{'delta us':>10}{'GB/s':>8}{'%copy':>7}{'meta us':>9}"
    )
    print(header)
    print("-" * len(header))
    groups: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        key = (row.model, row.module, row.rank, row.tokens)
        groups.setdefault(key, {})[row.method] = row
    for (model, module, rank, tokens), by_method in groups.items():
        base = by_method["base"]
        cells = "".join(f"{by_method[m].overhead_pct:>+13.1f}%" for m in METHODS[1:])
        delta = by_method["delta_only"]
        print(f"{model:<13}{module:<8}{rank:>3}{tokens:>6}{base.adapters:>4}{base.median_us:>10.1f}{cells}"
              f"{delta.median_us:>10.1f}{delta.achieved_gbps:>8.1f}{delta.pct_of_copy_bw:>6.1f}%"
              f"{by_method['meta_build'].median_us:>9.1f}")  # fmt: skip
    print("overheads are (method - base) / base; 'ad' = distinct adapters; delta = add_lora alone")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="SmolLM2 shapes and a 256-token prefill only")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")  # fmt: skip
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice); 1 avoids "
                             "oversubscription on a shared machine")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    dtype_name = args.dtype or ("bf16" if use_cuda else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    min_run_time = args.min_run_time or (0.2 if use_cuda else 0.05)
    shapes = [s for s in SHAPES if not args.quick or s[0] == "smollm2-135m"]
    scenarios = QUICK_SCENARIOS if args.quick else SCENARIOS
    backend = resolve_backend(None, device)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    copy_gbps = copy_bandwidth_gbps(device, min_run_time)
    logger.info("device %s, dtype %s, ours = %s backend, copy bandwidth %.1f GB/s, load avg %s",
                device, dtype_name, backend, copy_gbps, load_avg)  # fmt: skip
    rows: list[Row] = []
    for model, module, in_features, out_features in shapes:
        for rank in RANKS:
            for scenario in scenarios:
                logger.info("%s %s rank %d %s T=%d", model, module, rank, scenario[0], scenario[1])
                rows += bench_case(model, module, in_features, out_features, rank, scenario, device=device,
                                   dtype=dtype, min_run_time=min_run_time, copy_gbps=copy_gbps)  # fmt: skip
    print_table(rows)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"lora_kernels_{device.type}_{stamp}.json"
    device_name = torch.cuda.get_device_name(device) if use_cuda else platform.processor() or platform.machine()
    payload = {
        "benchmark": "lora_kernels",
        "created_utc": stamp,
        "device": device_name,
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "quick": args.quick,
        "cpu_load_avg_at_start": load_avg,
        "ours_backend": backend,
        "torch": torch.__version__,
        "copy_bandwidth_gbps": copy_gbps,
        "scale": SCALE,
        "notes": "overhead_pct = (method - base) / base for base matmul + deltas; delta_only = add_lora "
                 "alone; bytes_moved = what add_lora must read/write; peft_loop re-implements PEFT's "
                 "mixed-batch forward; meta_build is paid once per step, not per layer.",
        "rows": [asdict(r) for r in rows],
    }
    _write_json_atomic(out, payload)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
