"""Which modules of a served model take LoRA deltas, at what rank and scale.

Matching follows PEFT's ``target_modules`` rule so the same patterns work here:

* a **string** is a regular expression that must match a module's *full* dotted name
  (``re.fullmatch``), e.g. ``r".*\\.mlp\\.(gate|up|down)_proj"``;
* a **list** matches a module whose name equals an entry or ends with ``"." + entry``
  (a leading dot in an entry is accepted: ``".down_proj"``).

Only ``nn.Linear`` modules can be targets; the delta is ``y = W x + scaling * B (A x)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

#: The MLP projections DyPRAG adapts in every layer (Llama/Qwen/Mistral naming).
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")

#: How the deltas of several passages of one query are combined.
COMBINE_MODES = ("sum", "mean")


@dataclass
class DeltaConfig:
    """Where deltas go and how they are scaled and combined.

    ``rank`` is the rank of *one passage's* delta (the translator's output); combining ``k``
    passages concatenates their factors, so the applied rank is ``k * rank``.
    """

    target_modules: str | Sequence[str] = field(
        default=DEFAULT_TARGET_MODULES,
        metadata={"help": "full-match regex string, or list of module names / .suffixes"},
    )
    exclude_modules: str | Sequence[str] = field(default=(), metadata={"help": "same syntax as target_modules; checked first"})
    rank: int = field(default=2, metadata={"help": "rank r of one passage's LoRA delta"})
    scaling: float = field(default=1.0, metadata={"help": "s in y = W x + s * B (A x)"})
    combine: str = field(default="mean", metadata={"help": "'sum' or 'mean' of the passages' deltas"})

    def __post_init__(self) -> None:
        self.target_modules = _normalise_patterns(self.target_modules, "target_modules")
        self.exclude_modules = _normalise_patterns(self.exclude_modules, "exclude_modules", allow_empty=True)
        if isinstance(self.target_modules, tuple) and not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.scaling, (int, float)) or not float(self.scaling) == float(self.scaling):
            raise ValueError(f"scaling must be a finite number, got {self.scaling!r}")
        self.scaling = float(self.scaling)
        if self.scaling in (float("inf"), float("-inf")):
            raise ValueError(f"scaling must be a finite number, got {self.scaling!r}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")

    def matches(self, name: str) -> bool:
        """Does the module called ``name`` (as in ``model.named_modules()``) take a delta?"""
        if self.exclude_modules and _match(self.exclude_modules, name):
            return False
        return _match(self.target_modules, name)

    def to_dict(self) -> dict[str, object]:
        def plain(value: str | Sequence[str]) -> str | list[str]:
            return value if isinstance(value, str) else list(value)

        return {
            "target_modules": plain(self.target_modules),
            "exclude_modules": plain(self.exclude_modules),
            "rank": self.rank,
            "scaling": self.scaling,
            "combine": self.combine,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DeltaConfig:
        known = {"target_modules", "exclude_modules", "rank", "scaling", "combine"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DeltaConfig fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)  # type: ignore[arg-type]


def _normalise_patterns(value: str | Sequence[str], name: str, *, allow_empty: bool = False) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value and not allow_empty:
            raise ValueError(f"{name} must not be an empty string")
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{name} is not a valid regular expression: {value!r} ({error})") from error
        return value
    try:
        items = tuple(value)
    except TypeError as error:
        raise ValueError(f"{name} must be a regex string or a list of names, got {type(value).__name__}") from error
    for item in items:
        if not isinstance(item, str) or not item.strip(".").strip():
            raise ValueError(f"{name} entries must be non-empty module names, got {item!r}")
    return tuple(item.lstrip(".") for item in items)


def _match(patterns: str | Sequence[str], name: str) -> bool:
    if isinstance(patterns, str):
        return bool(patterns) and re.fullmatch(patterns, name) is not None
    return any(name == item or name.endswith("." + item) for item in patterns)
