"""The hybrid adapter: a context's token states -> k soft tokens for the served model (HyCo2's
global view).

Two branches read the context, both conditioned on the instruction, and a gate fuses them:

* **MLP branch with grouped local attention.**  The context's tokens are split into k
  consecutive groups.  Each group's mean (its representative) cross-attends to the
  instruction, then attends over the tokens of its own group only, then goes through an MLP:
  soft token i summarises the i-th stretch of the context, so local detail survives.
* **Q-Former branch.**  k learned queries attend to each other, cross-attend to the
  instruction, then attend over the whole context (states plus sinusoidal positions), then an
  MLP: each query gathers what the instruction asks for from anywhere in the context.
* **Noisy top-2 softmax gate** (Shazeer et al.'s noisy top-k gating with k = 2 of 2 branches),
  computed from the pooled context: per soft token, a softmax over the two branches, with
  learned Gaussian noise while training so neither branch is starved early.

Each soft token is scaled to the mean norm of the served model's embedding rows: the reader
then gets inputs of the magnitude its own embeddings have (xRAG and HyCo2 do the same).

Saved as ``config.json`` + ``model.safetensors`` (fp16), like the DyPRAG translator, and
checked against the model it serves on load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from hyco_rag.hybrid.config import BRANCHES, HybridConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "hyco-rag-hybrid-adapter"
FORMAT_VERSION = 1

#: Where the trained default for the embedded SmolLM2 lives.
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent.parent / "resources" / "hybrid"

#: Relative L2 distance of the embedding fingerprint above which a model counts as "another".
FINGERPRINT_TOLERANCE = 0.05


class AdapterMismatchError(ValueError):
    """The adapter was made for another model, or its weights do not match its config."""


class _Attention(nn.Module):
    """Pre-norm multi-head attention of ``x`` over ``memory`` with a residual; ``allowed``
    ``[B, Lx, Lm]`` says which memory entries each query may read.  A query that may read
    nothing (an empty group) gets no update instead of NaN."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, head_dim).transpose(1, 2)

        any_allowed = allowed.any(-1, keepdim=True)  # [B, Lx, 1]
        safe = allowed | ~any_allowed  # a query with nothing to read reads everything, then is zeroed
        q = split(self.query(self.norm(x)))
        k = split(self.key(keys if keys is not None else memory))
        v = split(self.value(memory))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None])
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        return x + self.out(attended) * any_allowed.to(x.dtype)


class _MLP(nn.Module):
    def __init__(self, width: int, ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, width * ratio)
        self.down = nn.Linear(width * ratio, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


def _sinusoid(length: int, width: int, device: torch.device) -> torch.Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale)
    return table


def group_assignment(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, L, groups]`` one-hot: which of ``groups`` consecutive stretches each real token of
    a right-padded ``mask`` ``[B, L]`` falls in (padding rows are all zero)."""
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
    index = torch.arange(mask.shape[1], device=mask.device)[None, :]  # [1, L]
    group = (index * groups) // lengths  # [B, L]
    one_hot = F.one_hot(group.clamp(max=groups - 1), groups).to(torch.float32)
    return one_hot * mask[..., None].to(torch.float32)


class HybridAdapter(nn.Module):
    """Context token states (+ instruction states) -> ``num_soft_tokens`` soft tokens.

    Args:
        config: sizes (see :class:`~hyco_rag.hybrid.config.HybridConfig`).
    """

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config
        width, heads, ratio = config.width, config.heads, config.mlp_ratio
        self.context_in = nn.Sequential(nn.LayerNorm(config.hidden_size), nn.Linear(config.hidden_size, width))
        self.instruction_in = nn.Sequential(nn.LayerNorm(config.hidden_size), nn.Linear(config.hidden_size, width))
        # MLP branch: group representative -> instruction -> own group -> MLP
        self.mlp_instruction = _Attention(width, heads)
        self.mlp_group = _Attention(width, heads)
        self.mlp_block = _MLP(width, ratio)
        # Q-Former branch: queries -> each other -> instruction -> context (with positions) -> MLP
        self.queries = nn.Parameter(torch.randn(config.num_soft_tokens, width) * 0.02)
        self.qformer_self = _Attention(width, heads)
        self.qformer_instruction = _Attention(width, heads)
        self.qformer_context = _Attention(width, heads)
        self.qformer_block = _MLP(width, ratio)
        # Noisy top-2 gate over the two branches, per soft token
        self.gate = nn.Linear(width, config.num_soft_tokens * len(BRANCHES))
        self.gate_noise = nn.Linear(width, config.num_soft_tokens * len(BRANCHES))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.hidden_size))
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        instruction: torch.Tensor,
        instruction_mask: torch.Tensor,
        *,
        branch: str | None = None,
        return_gate: bool = False,
    ) -> Any:
        """Soft tokens ``[B, k, hidden]`` for right-padded context and instruction states.

        Args:
            context / context_mask: ``[B, Lc, hidden]`` states and ``[B, Lc]`` (1 = real token).
            instruction / instruction_mask: the same for the instruction (the question).
            branch: ``"mlp"`` or ``"qformer"`` uses that branch alone (ablations); ``None``
                fuses both through the gate.
            return_gate: also return the gate weights ``[B, k, 2]``.
        """
        if branch is not None and branch not in BRANCHES:
            raise ValueError(f"branch must be one of {', '.join(BRANCHES)} or None, got {branch!r}")
        if context.shape[-1] != self.config.hidden_size or instruction.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"states must have the served model's hidden size {self.config.hidden_size}; got "
                f"{context.shape[-1]} (context) and {instruction.shape[-1]} (instruction)"
            )
        context_mask, instruction_mask = context_mask.bool(), instruction_mask.bool()
        if not bool(context_mask.any(-1).all()):
            raise ValueError("every row needs at least one context token")
        dtype = self.queries.dtype
        ctx = self.context_in(context.to(dtype))
        ins = self.instruction_in(instruction.to(dtype))
        batch, k = ctx.shape[0], self.config.num_soft_tokens

        # MLP branch
        groups = group_assignment(context_mask, k)  # [B, Lc, k]
        counts = groups.sum(1)  # [B, k]
        representative = torch.einsum("blk,bld->bkd", groups, ctx) / counts.clamp(min=1)[..., None]
        reads_instruction = instruction_mask[:, None, :].expand(batch, k, -1)
        mlp = self.mlp_instruction(representative, ins, reads_instruction)
        mlp = self.mlp_group(mlp, ctx, groups.transpose(1, 2) > 0)
        mlp = self.mlp_block(mlp)

        # Q-Former branch
        queries = self.queries[None].expand(batch, -1, -1)
        everyone = torch.ones(batch, k, k, dtype=torch.bool, device=ctx.device)
        qformer = self.qformer_self(queries, queries, everyone)
        qformer = self.qformer_instruction(qformer, ins, reads_instruction)
        positioned = ctx + _sinusoid(ctx.shape[1], ctx.shape[2], ctx.device)[None].to(dtype)
        qformer = self.qformer_context(qformer, ctx, context_mask[:, None, :].expand(batch, k, -1), keys=positioned)
        qformer = self.qformer_block(qformer)

        # Gate
        pooled = (ctx * context_mask[..., None]).sum(1) / context_mask.sum(-1, keepdim=True).clamp(min=1)
        logits = self.gate(pooled).view(batch, k, len(BRANCHES))
        if self.training and self.config.gate_noise > 0:
            noise = F.softplus(self.gate_noise(pooled)).view(batch, k, len(BRANCHES))
            logits = logits + torch.randn_like(logits) * noise * self.config.gate_noise
        weights = torch.softmax(logits, dim=-1)  # top-2 of 2 branches: both kept
        if branch is not None:
            weights = F.one_hot(torch.full((batch, k), BRANCHES.index(branch), device=ctx.device), len(BRANCHES)).to(dtype)
        fused = weights[..., 0:1] * mlp + weights[..., 1:2] * qformer
        soft = self.out(fused)
        soft = F.normalize(soft, dim=-1) * self.config.embedding_norm
        return (soft, weights) if return_gate else soft

    # ------------------------------------------------------------------ identity

    def check_compatible(self, model: PreTrainedModel) -> None:
        """Refuse a model other than the one this adapter was trained for, naming what differs."""
        from hyco_rag.dyprag.translator import embedding_fingerprint

        hidden = int(getattr(model.config, "hidden_size", 0))
        if hidden != self.config.hidden_size:
            raise AdapterMismatchError(
                f"this hybrid adapter makes soft tokens of size {self.config.hidden_size}, but the model's hidden size is {hidden}"
            )
        expected = self.config.model.get("fingerprint")
        if expected:
            ref = torch.tensor(expected, dtype=torch.float32)
            got = torch.tensor(embedding_fingerprint(model), dtype=torch.float32)
            distance = float((ref - got).norm() / ref.norm().clamp(min=1e-12)) if ref.shape == got.shape else math.inf
            if distance > FINGERPRINT_TOLERANCE:
                raise AdapterMismatchError(
                    f"this hybrid adapter was trained for {self.config.model.get('name', 'another model')!r} (embedding "
                    f"fingerprint distance {distance:.3f} > {FINGERPRINT_TOLERANCE}): same shapes, another model"
                )

    @classmethod
    def for_model(cls, model: PreTrainedModel, **sizes: Any) -> HybridAdapter:
        """A fresh adapter sized for ``model``, recording its identity and embedding norm."""
        from hyco_rag.dyprag.translator import embedding_fingerprint

        embeddings = model.get_input_embeddings().weight.detach().float()
        name = str(getattr(model.config, "_name_or_path", "") or "")
        identity = {
            "name": Path(name).name if os.sep in name else name,
            "model_type": getattr(model.config, "model_type", ""),
            "hidden_size": int(model.config.hidden_size),
            "fingerprint": embedding_fingerprint(model),
        }
        config = HybridConfig(
            hidden_size=int(model.config.hidden_size),
            embedding_norm=round(float(embeddings.norm(dim=-1).mean()), 6),
            model=identity,
            **sizes,
        )
        return cls(config)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike[str], *, dtype: torch.dtype = torch.float16) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (``dtype``, default fp16) atomically."""
        from hyco_rag.results import save_safetensors_atomic, write_json_atomic

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.detach().to(dtype).cpu().contiguous() for name, value in self.state_dict().items()}
        save_safetensors_atomic(tensors, directory / WEIGHTS_NAME, {"format": FORMAT_NAME, "version": str(FORMAT_VERSION)})
        write_json_atomic(directory / CONFIG_NAME, asdict(self.config))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        model: PreTrainedModel | None = None,
        map_location: str | torch.device = "cpu",
    ) -> HybridAdapter:
        """Load a saved adapter (default: the one shipped for the embedded SmolLM2).

        Raises:
            FileNotFoundError: no adapter in ``directory``.
            AdapterMismatchError: weights that do not match the config, or (with ``model``)
                made for another model.
        """
        from safetensors import safe_open

        directory = Path(directory) if directory is not None else DEFAULT_ADAPTER_DIR
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(
                f"no hybrid adapter at {directory} (expected {CONFIG_NAME} and {WEIGHTS_NAME}); train one with `hyco-rag train hybrid`"
            )
        with config_path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        try:
            config = HybridConfig(**data)
        except TypeError as error:
            raise AdapterMismatchError(f"{config_path} is not a hybrid adapter config: {error}") from error
        adapter = cls(config)
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        expected = adapter.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise AdapterMismatchError(
                f"{weights_path} does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise AdapterMismatchError(
                    f"{weights_path}: tensor {key!r} is {tuple(value.shape)} but the config needs {tuple(expected[key].shape)}"
                )
        adapter.load_state_dict({key: value.float() for key, value in state.items()})
        adapter.to(map_location).eval()
        if model is not None:
            adapter.check_compatible(model)
        return adapter
