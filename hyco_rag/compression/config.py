"""`CompressorConfig`: everything that defines a compressor model and its default budget.

Saved as ``config.json`` beside ``model.safetensors`` (see :meth:`HyCoCompressor.save_pretrained`).
Only the trained parameters are stored; the backbone is loaded from its own folder by the name
recorded in ``encoder``, so shipped weights stay a few MB.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hyco_rag.models import DEFAULT_ENCODER

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Bumped when the saved layout changes incompatibly; loading a newer format fails clearly.
FORMAT_VERSION = 1


def _check_fraction(name: str, value: float, *, allow_one: bool = True) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if not (0 < value < 1 or (allow_one and value == 1)):
        raise ValueError(f"{name} must be in (0, 1{']' if allow_one else ')'}, got {value!r}")


@dataclass
class CompressorConfig:
    """Architecture, chunking and selection settings of a :class:`HyCoCompressor`."""

    encoder: str = field(
        default=DEFAULT_ENCODER,
        metadata={"help": "backbone: HF id or local folder of a bidirectional encoder (BERT-family for the fast path)"},
    )
    max_length: int = field(default=256, metadata={"help": "encoder tokens per chunk, query and special tokens included"})
    max_query_tokens: int = field(default=48, metadata={"help": "longer queries are cut to this many tokens (logged)"})
    chunk_overlap: int = field(default=32, metadata={"help": "tokens shared by consecutive chunks of a long passage"})
    exit_layer: int = field(
        default=3,
        metadata={"help": "coarse pass after this many layers; only chunks it keeps run the remaining layers"},
    )
    attention: str = field(
        default="asymmetric",
        metadata={
            "help": "'asymmetric': passage tokens do not attend to the query (frozen bi-encoder states stay "
            "intact, query side cross-attends); 'full': joint attention (for trained deltas)"
        },
    )
    lora_rank: int = field(
        default=0,
        metadata={"help": "rank of the low-rank deltas on the layers above exit_layer (0: frozen backbone, heads only)"},
    )
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scale numerator (scale = alpha / rank)"})
    lora_targets: tuple[str, ...] = field(
        default=(
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
        metadata={"help": "module name suffixes (inside each upper layer) that get a low-rank delta"},
    )
    head_hidden: int = field(default=128, metadata={"help": "hidden width of the scoring heads"})
    default_rate: float = field(default=0.25, metadata={"help": "kept share when no budget is given"})
    survivor_factor: float = field(
        default=2.0,
        metadata={"help": "the coarse pass keeps chunks holding at least this many times the budget"},
    )
    min_survivor_chunks: int = field(default=3, metadata={"help": "the coarse pass keeps at least this many chunks per request"})
    word_slack: float = field(
        default=0.25,
        metadata={"help": "sentences worth (1 + slack) x budget are taken, then the lowest-keep words pruned"},
    )
    passage_weight: float = field(default=1.0, metadata={"help": "weight of the passage logit in a sentence's global score"})
    granularity: str = field(
        default="clause",
        metadata={"help": "what selection keeps or drops together: 'word', 'clause' (up to , ; : or a dash) or 'sentence'"},
    )
    min_fragment_tokens: int = field(
        default=5,
        metadata={"help": "a passage whose selected text is shorter than this is dropped (no one-word stubs); 0: off"},
    )
    format_version: int = field(default=FORMAT_VERSION, metadata={"help": "saved layout version"})
    library_version: str = field(default="", metadata={"help": "hyco-rag version that saved the weights"})
    training: dict[str, Any] = field(default_factory=dict, metadata={"help": "what the weights were trained on (informative)"})

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise ValueError(f"encoder must be a non-empty model name or folder, got {self.encoder!r}")
        self.lora_targets = tuple(self.lora_targets)
        if self.attention not in ("asymmetric", "full"):
            raise ValueError(f"attention must be 'asymmetric' or 'full', got {self.attention!r}")
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise ValueError(f"lora_rank must be a non-negative integer, got {self.lora_rank!r}")
        for name in ("max_length", "max_query_tokens", "head_hidden", "min_survivor_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from hyco_rag.compression.words import GRANULARITIES

        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if (
            not isinstance(self.min_fragment_tokens, int)
            or isinstance(self.min_fragment_tokens, bool)
            or self.min_fragment_tokens < 0
        ):
            raise ValueError(f"min_fragment_tokens must be a non-negative integer, got {self.min_fragment_tokens!r}")
        if not isinstance(self.chunk_overlap, int) or self.chunk_overlap < 0:
            raise ValueError(f"chunk_overlap must be a non-negative integer, got {self.chunk_overlap!r}")
        if self.max_length < self.max_query_tokens + 32:
            raise ValueError(
                f"max_length ({self.max_length}) must leave at least 32 passage tokens after "
                f"max_query_tokens ({self.max_query_tokens}) and the special tokens"
            )
        if self.chunk_overlap >= (self.max_length - self.max_query_tokens - 3) // 2:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be under half of a chunk's passage tokens")
        if not isinstance(self.exit_layer, int) or self.exit_layer < 1:
            raise ValueError(f"exit_layer must be an integer >= 1, got {self.exit_layer!r}")
        _check_fraction("default_rate", self.default_rate)
        for name in ("survivor_factor", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("word_slack", "passage_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"these weights use format {self.format_version}, newer than this hyco-rag understands "
                f"({FORMAT_VERSION}); upgrade hyco-rag"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown compressor config keys %s (saved by a newer hyco-rag?)", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> Path:
        from hyco_rag import __version__
        from hyco_rag.results import write_json_atomic

        self.library_version = __version__
        return write_json_atomic(Path(directory) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> CompressorConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no compressor config at {path} (expected a folder written by save_pretrained)")
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)
