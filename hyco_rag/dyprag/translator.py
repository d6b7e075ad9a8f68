"""The parameter translator: a hypernetwork from a passage embedding to LoRA factors.

DyPRAG trains one independent two-layer MLP per (module, layer): 3 * L of them, 38M-138M
parameters for 1B-8B backbones.  Ours keeps the same input/output contract with a shared trunk:

    x        = (e - mu) / sigma                             standardised by training-passage statistics
    z        = trunk(LayerNorm(x))                          shared by every target   [p]
    z_t      = GELU(z * (1 + gamma_t) + beta_t)             FiLM per target (layer l, type m)
    A_t      = head^A_m(z_t).view(r, in_m)                  head shared by all layers of type m
    B_t      = head^B_m(z_t).view(out_m, r)  [+ g_t * direct_m(LayerNorm(x)) for out_m == D]

Everything is a function of the passage: there is **no static, passage-independent delta** (an
earlier version held a per-target ``A0, B0`` initialised to the mean PRAG LoRA, which gave a
format gain for free and hid that the passage part learned nothing).  ``B`` starts at zero, so
an untrained translator's deltas are exactly zero.  Modules whose output lives in the residual
stream (``down_proj``: ``out == D``) also get a *direct* path, a linear map of the full
``D``-dimensional passage embedding into ``B`` (gated per target), which the ``p``-dimensional
trunk would otherwise bottleneck.

Saved as ``config.json`` + ``model.safetensors``; the config records the base model's identity
(name, architecture sizes, every target's shape and an embedding-weight fingerprint), and
:meth:`ParameterTranslator.check_compatible` refuses a model that differs, or a rank that
differs from the one requested, with an error that says which.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from hyco_rag.dyprag.config import DeltaConfig
from hyco_rag.dyprag.delta import LoRADelta
from hyco_rag.dyprag.injection import find_target_modules, layer_index, module_type
from hyco_rag.results import save_safetensors_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "hyco-rag-parameter-translator"
FORMAT_VERSION = 2
#: Relative L2 distance of the embedding fingerprint above which a model counts as "another".
FINGERPRINT_TOLERANCE = 0.05
#: Where the shipped default translator lives (for the embedded SmolLM2-135M-Instruct).
DEFAULT_TRANSLATOR_DIR = Path(__file__).resolve().parent.parent / "resources" / "translator"


class TranslatorMismatchError(ValueError):
    """The translator was made for another model, or for another rank / target set."""


def embedding_fingerprint(model: nn.Module, rows: int = 16, dims: int = 16) -> list[float]:
    """A few embedding-matrix entries: distinguishes differently trained weights of equal shape."""
    weight = model.get_input_embeddings().weight.detach()
    index = torch.linspace(0, weight.shape[0] - 1, rows).long().to(weight.device)
    probe = weight.index_select(0, index)[:, :dims].float().flatten().cpu()
    return [round(float(v), 6) for v in probe]


def model_identity(model: PreTrainedModel, delta_config: DeltaConfig) -> dict[str, object]:
    """What a translator records about the model it was trained for."""
    cfg = model.config
    targets = find_target_modules(model, delta_config)
    name = str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", ""))
    return {
        "name": Path(name).name if os.sep in name else name,  # a local folder's path is machine-specific
        "model_type": getattr(cfg, "model_type", ""),
        "hidden_size": int(getattr(cfg, "hidden_size", 0)),
        "num_hidden_layers": int(getattr(cfg, "num_hidden_layers", 0)),
        "intermediate_size": int(getattr(cfg, "intermediate_size", 0) or 0),
        "vocab_size": int(getattr(cfg, "vocab_size", 0)),
        "targets": {name: [m.in_features, m.out_features] for name, m in targets.items()},
        "fingerprint": embedding_fingerprint(model),
    }


@dataclass
class TranslatorConfig:
    """Shape of a translator and the identity of the model it serves.

    ``targets`` maps every target module name to ``[in_features, out_features]``.
    """

    input_dim: int
    targets: dict[str, list[int]]
    rank: int = 2
    hidden_dim: int = 32
    direct: bool = True  # direct embedding -> B path for modules whose out_features == input_dim
    delta: dict[str, object] = field(default_factory=lambda: DeltaConfig().to_dict())
    base_model: dict[str, object] = field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format != FORMAT_NAME:
            raise ValueError(f"not a translator config (format {self.format!r}, expected {FORMAT_NAME!r})")
        if self.version > FORMAT_VERSION:
            raise ValueError(f"translator format version {self.version} is newer than this hyco-rag ({FORMAT_VERSION})")
        if self.version < FORMAT_VERSION:
            raise ValueError(
                f"translator format version {self.version} held a static passage-independent delta, which "
                f"version {FORMAT_VERSION} removed; retrain it (python -m hyco_rag.cli.train_dyprag distill)"
            )
        if self.input_dim < 1 or self.hidden_dim < 1 or self.rank < 1:
            raise ValueError(
                f"input_dim, hidden_dim and rank must be positive, got {self.input_dim}, {self.hidden_dim}, {self.rank}"
            )
        if not self.targets:
            raise ValueError("a translator needs at least one target module")
        for name, shape in self.targets.items():
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"targets[{name!r}] must be [in_features, out_features], got {shape}")
        types: dict[str, tuple[int, int]] = {}
        for name, shape in self.targets.items():
            known = types.setdefault(module_type(name), (shape[0], shape[1]))
            if known != (shape[0], shape[1]):
                raise ValueError(f"modules of type {module_type(name)!r} differ in shape: {known} vs {tuple(shape)}")
        delta = DeltaConfig.from_dict(dict(self.delta))
        if delta.rank != self.rank:
            raise ValueError(f"delta config rank {delta.rank} != translator rank {self.rank}")

    @property
    def delta_config(self) -> DeltaConfig:
        return DeltaConfig.from_dict(dict(self.delta))

    @property
    def module_types(self) -> dict[str, tuple[int, int]]:
        """``type -> (in, out)`` in first-seen order (``gate_proj``, ``up_proj``, ...)."""
        types: dict[str, tuple[int, int]] = {}
        for name, (i, o) in self.targets.items():
            types.setdefault(module_type(name), (i, o))
        return types

    @classmethod
    def for_model(
        cls, model: PreTrainedModel, delta_config: DeltaConfig | None = None, *, hidden_dim: int = 32
    ) -> TranslatorConfig:
        delta_config = delta_config or DeltaConfig()
        identity = model_identity(model, delta_config)
        return cls(
            input_dim=int(model.config.hidden_size),
            targets=dict(cast("dict[str, list[int]]", identity["targets"])),
            rank=delta_config.rank,
            hidden_dim=hidden_dim,
            delta=delta_config.to_dict(),
            base_model=identity,
        )


class ParameterTranslator(nn.Module):
    """Passage embedding ``[N, D]`` -> LoRA factors for every target module.

    Use :meth:`translate` at serving time (no grad, returns :class:`LoRADelta` objects) and
    :meth:`forward` in training (differentiable ``name -> (A [N, r, in], B [N, out, r])``).
    """

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__()
        self.config = config
        d, p, r = config.input_dim, config.hidden_dim, config.rank
        self.names = list(config.targets)
        self.types = list(config.module_types)
        # Targets of each type, in name order, and their row in the per-target tables.
        self.type_targets: dict[str, list[int]] = {t: [] for t in self.types}
        for index, name in enumerate(self.names):
            self.type_targets[module_type(name)].append(index)
        self.norm = nn.LayerNorm(d)
        self.trunk = nn.Sequential(nn.Linear(d, p), nn.GELU(), nn.Linear(p, p))
        self.film_gamma = nn.Parameter(torch.zeros(len(self.names), p))
        self.film_beta = nn.Parameter(torch.zeros(len(self.names), p))
        self.head_a = nn.ModuleDict()
        self.head_b = nn.ModuleDict()
        self.head_direct = nn.ModuleDict()
        self.direct_norm = nn.LayerNorm(d)
        for t, (i, o) in config.module_types.items():
            self.head_a[t] = nn.Linear(p, r * i, bias=False)
            self.head_b[t] = nn.Linear(p, o * r, bias=False)
            if config.direct and o == d:
                self.head_direct[t] = nn.Linear(d, r * d, bias=False)
        self.direct_gate = nn.Parameter(torch.ones(len(self.names), r))
        # Input standardisation, set from the training passages' embeddings (identity until then).
        self.register_buffer("feature_mean", torch.zeros(d))
        self.register_buffer("feature_std", torch.ones(d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``A`` heads LoRA-scaled, ``B`` heads zero (zero deltas), FiLM at identity plus a layer sinusoid."""
        generator = torch.Generator().manual_seed(0)
        p = self.config.hidden_dim
        for t in self.types:
            i, _ = self.config.module_types[t]
            nn.init.normal_(self.head_a[t].weight, std=1.0 / math.sqrt(i * p), generator=generator)
            nn.init.zeros_(self.head_b[t].weight)
            if t in self.head_direct:
                nn.init.zeros_(self.head_direct[t].weight)
        layers = torch.tensor([layer_index(n) for n in self.names], dtype=torch.float32)
        span = max(1.0, float(layers.max()))
        with torch.no_grad():
            self.film_gamma.zero_()
            self.direct_gate.fill_(1.0)
            # A fixed sinusoid of the layer index in beta: heads start layer-aware.
            freqs = torch.arange(p, dtype=torch.float32) / p
            self.film_beta.copy_(0.1 * torch.sin(layers[:, None] / span * math.pi * (1 + 4 * freqs)[None, :]))

    @torch.no_grad()
    def set_feature_statistics(self, embeddings: torch.Tensor) -> None:
        """Standardise inputs by the mean and std of training-passage embeddings ``[N, D]``."""
        embeddings = embeddings.float()
        self.feature_mean.copy_(embeddings.mean(0))
        self.feature_std.copy_(
            embeddings.std(0).clamp_min(1e-4) if embeddings.shape[0] > 1 else torch.ones_like(self.feature_std)
        )

    def mean_embedding(self) -> torch.Tensor:
        """``[1, D]``: the average training passage (its delta is the ``format_only`` control)."""
        return self.feature_mean[None].clone()

    @property
    def rank(self) -> int:
        return self.config.rank

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, embeddings: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``[N, D]`` embeddings -> ``name -> (A [N, r, in], B [N, out, r])`` (differentiable)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.input_dim:
            raise ValueError(f"embeddings must be [N, {self.config.input_dim}], got {tuple(embeddings.shape)}")
        weight = self.trunk[0].weight
        x = embeddings.to(device=weight.device, dtype=weight.dtype)
        x = (x - self.feature_mean.to(x.dtype)) / self.feature_std.to(x.dtype)
        z = self.trunk(self.norm(x))  # [N, p]
        direct_in = self.direct_norm(x) if len(self.head_direct) else None
        r = self.config.rank
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in self.types:
            rows = self.type_targets[t]
            index = torch.tensor(rows, device=z.device)
            zt = nn.functional.gelu(
                z[:, None, :] * (1 + self.film_gamma.index_select(0, index))[None] + self.film_beta.index_select(0, index)[None]
            )  # [N, L_t, p]
            i, o = self.config.module_types[t]
            a = self.head_a[t](zt).view(z.shape[0], len(rows), r, i)
            b = self.head_b[t](zt).view(z.shape[0], len(rows), o, r)
            if t in self.head_direct:
                direct = self.head_direct[t](direct_in).view(z.shape[0], 1, r, o).transpose(-1, -2)  # [N, 1, o, r]
                b = b + direct * self.direct_gate.index_select(0, index)[None, :, None, :]
            for k, target in enumerate(rows):
                out[self.names[target]] = (a[:, k], b[:, k])
        return out

    @torch.no_grad()
    def translate(self, embeddings: torch.Tensor) -> list[LoRADelta]:
        """One :class:`LoRADelta` per embedding (serving path, no autograd)."""
        factors = self.forward(embeddings)
        scaling = float(self.config.delta_config.scaling)
        return [LoRADelta({name: (a[n], b[n]) for name, (a, b) in factors.items()}, scaling) for n in range(embeddings.shape[0])]

    # ------------------------------------------------------------------ compatibility

    def check_compatible(self, model: PreTrainedModel, delta_config: DeltaConfig | None = None) -> None:
        """Raise :class:`TranslatorMismatchError` unless ``model`` is the one this was trained for.

        Checks architecture sizes, the name and shape of every target module, the embedding
        fingerprint (catches same-shape models with other weights), and the rank (and target
        set) of ``delta_config`` when given.
        """
        expected = self.config.base_model
        label = expected.get("name") or "its training model"
        if delta_config is not None:
            if delta_config.rank != self.config.rank:
                raise TranslatorMismatchError(
                    f"the translator produces rank-{self.config.rank} deltas but rank {delta_config.rank} was "
                    "requested; use DeltaConfig(rank=%d) or a translator trained for that rank" % self.config.rank
                )
        config = self.config.delta_config if delta_config is None else delta_config
        try:
            found = model_identity(model, config)
        except ValueError as error:
            raise TranslatorMismatchError(f"the translator's target modules do not exist in this model: {error}") from error
        for key in ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"):
            if key in expected and expected[key] != found[key]:
                raise TranslatorMismatchError(
                    f"this translator was trained for {label} ({key}={expected[key]}), but the model "
                    f"has {key}={found[key]}; train a translator for this model (hyco-rag train prag/translator)"
                )
        found_targets = cast("dict[str, list[int]]", found["targets"])
        if set(found_targets) != set(self.config.targets):
            missing = sorted(set(self.config.targets) - set(found_targets))[:3]
            extra = sorted(set(found_targets) - set(self.config.targets))[:3]
            raise TranslatorMismatchError(
                f"target modules differ from the translator's (missing in model: {missing}, not covered by translator: {extra})"
            )
        for name, shape in self.config.targets.items():
            if list(found_targets[name]) != list(shape):
                raise TranslatorMismatchError(
                    f"module {name!r} is {found_targets[name]} (in, out) in this model but "
                    f"{shape} in the model the translator was trained for ({label})"
                )
        if expected.get("fingerprint"):
            ref = torch.tensor(expected["fingerprint"], dtype=torch.float32)  # type: ignore[arg-type]
            got = torch.tensor(found["fingerprint"], dtype=torch.float32)  # type: ignore[arg-type]
            distance = float((ref - got).norm() / ref.norm().clamp_min(1e-12)) if ref.shape == got.shape else math.inf
            if distance > FINGERPRINT_TOLERANCE:
                raise TranslatorMismatchError(
                    f"this translator was trained for {label}, but the model's weights differ (embedding "
                    f"fingerprint distance {distance:.3f} > {FINGERPRINT_TOLERANCE}): same shapes, another model"
                )

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike[str], *, dtype: torch.dtype = torch.float16) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically).

        Weights are stored as ``dtype`` (default fp16: half the bytes; :meth:`from_pretrained`
        loads them back as fp32)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.detach().to(dtype).cpu().contiguous() for name, value in self.state_dict().items()}
        save_safetensors_atomic(tensors, directory / WEIGHTS_NAME, {"format": FORMAT_NAME, "version": str(FORMAT_VERSION)})
        from hyco_rag.results import write_json_atomic

        write_json_atomic(directory / CONFIG_NAME, asdict(self.config))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        model: PreTrainedModel | None = None,
        delta_config: DeltaConfig | None = None,
        map_location: str | torch.device = "cpu",
    ) -> ParameterTranslator:
        """Load a saved translator (default: the shipped one for SmolLM2-135M-Instruct).

        With ``model`` (and optionally ``delta_config``), :meth:`check_compatible` runs first.

        Raises:
            FileNotFoundError: no translator in ``directory``.
            TranslatorMismatchError: saved for another model / rank, or weights that do not
                match the config.
        """
        from safetensors import safe_open

        directory = Path(directory) if directory is not None else DEFAULT_TRANSLATOR_DIR
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(
                f"no translator at {directory} (expected {CONFIG_NAME} and {WEIGHTS_NAME}); train one with "
                "`hyco-rag train prag` then `hyco-rag train translator`"
            )
        with config_path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        try:
            config = TranslatorConfig(**data)
        except TypeError as error:
            raise ValueError(f"{config_path} is not a translator config: {error}") from error
        translator = cls(config)
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        expected = translator.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise TranslatorMismatchError(
                f"{weights_path} does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise TranslatorMismatchError(
                    f"{weights_path}: tensor {key!r} is {tuple(value.shape)} but the config (rank "
                    f"{config.rank}, hidden_dim {config.hidden_dim}) needs {tuple(expected[key].shape)}"
                )
        translator.load_state_dict({key: value.float() for key, value in state.items()})
        translator.to(map_location).eval()
        if model is not None:
            translator.check_compatible(model, delta_config)
        return translator


def combine_deltas(deltas: Sequence[LoRADelta], mode: str = "mean") -> LoRADelta:
    """Exact sum/mean of passage deltas (see :meth:`LoRADelta.combine`)."""
    return LoRADelta.combine(deltas, mode)
