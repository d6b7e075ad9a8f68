"""The data a request carries: low-rank deltas, one set per passage or per batch row.

A :class:`LoRADelta` holds, for some target modules, the factors ``A [r, in]`` and
``B [out, r]`` of ``delta W = scaling * B @ A``; ``B @ A`` is never formed.  Several passages'
deltas combine *exactly* by concatenating their factors along the rank:
``[B_1 .. B_k] @ [A_1; ..; A_k] = sum_i B_i A_i`` (and a ``1/k`` scale gives the mean).  This is
PRAG's ``combination_type="cat"``; DyPRAG's code instead averages ``A`` and ``B`` separately,
whose product is not the mean delta.

A :class:`DeltaBatch` is what the hooks consume: per target module a stack of slots
``A [S, r, in]``, ``B [S, out, r]``, a per-slot scale ``[S]`` and a slot per batch row
(``-1`` = no delta), the layout of :func:`hyco_rag.kernels.add_lora`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from hyco_rag.dyprag.config import COMBINE_MODES


class DeltaValueError(ValueError):
    """A delta holds NaN/Inf or has inconsistent shapes; nothing was applied."""


def _check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(tensor.detach()).all()):
        bad = int((~torch.isfinite(tensor.detach())).sum())
        raise DeltaValueError(f"{what} for module {name!r} holds {bad} NaN/Inf value(s); refusing to apply it")


@dataclass
class LoRADelta:
    """Low-rank deltas of one passage (or one combined request): ``name -> (A, B)``.

    Attributes:
        factors: module name (as in ``model.named_modules()``) -> ``(A [r, in], B [out, r])``.
        scaling: ``s`` in ``y = W x + s * B (A x)``.
    """

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.factors, Mapping) or not self.factors:
            raise DeltaValueError("a LoRADelta needs at least one (A, B) pair")
        self.factors = dict(self.factors)
        ranks = set()
        for name, pair in self.factors.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise DeltaValueError(f"factors[{name!r}] must be an (A, B) pair")
            a, b = pair
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != 2 or b.dim() != 2:
                raise DeltaValueError(f"factors[{name!r}] must be 2-D tensors A [r, in] and B [out, r]")
            if a.shape[0] != b.shape[1]:
                raise DeltaValueError(
                    f"factors[{name!r}]: A is {tuple(a.shape)} and B is {tuple(b.shape)}; their ranks (A rows, B columns) differ"
                )
            ranks.add(a.shape[0])
        if len(ranks) != 1:
            raise DeltaValueError(f"all modules of one LoRADelta must share a rank, got {sorted(ranks)}")
        scaling = float(self.scaling)
        if scaling != scaling or scaling in (float("inf"), float("-inf")):
            raise DeltaValueError(f"scaling must be finite, got {self.scaling!r}")
        self.scaling = scaling

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values()))[0].shape[0]

    @property
    def modules(self) -> list[str]:
        return list(self.factors)

    @property
    def nbytes(self) -> int:
        """Bytes of the factors (what storing this delta would cost)."""
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.factors.values())

    def validate(self) -> None:
        """Raise :class:`DeltaValueError` if any factor holds NaN or Inf."""
        for name, (a, b) in self.factors.items():
            _check_finite(name, a, "A")
            _check_finite(name, b, "B")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LoRADelta:
        return LoRADelta(
            {name: (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)) for name, (a, b) in self.factors.items()},
            self.scaling,
        )

    def detach(self) -> LoRADelta:
        return LoRADelta({name: (a.detach(), b.detach()) for name, (a, b) in self.factors.items()}, self.scaling)

    @staticmethod
    def combine(deltas: Sequence[LoRADelta], mode: str = "mean") -> LoRADelta:
        """Exact sum or mean of several deltas, by concatenating factors along the rank.

        Each delta's own scaling is folded into its ``B``; the result has rank ``sum(r_i)``.
        Modules missing from some deltas contribute zero for those deltas.
        """
        if mode not in COMBINE_MODES:
            raise ValueError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")
        deltas = list(deltas)
        if not deltas:
            raise ValueError("combine needs at least one delta")
        if len(deltas) == 1:
            return deltas[0]
        names = list(dict.fromkeys(name for delta in deltas for name in delta.factors))
        combined: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in names:
            in_features, out_features = _module_shape(deltas, name)
            a_parts, b_parts = [], []
            for delta in deltas:
                if name in delta.factors:
                    a, b = delta.factors[name]
                    a_parts.append(a)
                    b_parts.append(b * delta.scaling)
                else:  # zero contribution, same rank bookkeeping
                    ref_a, ref_b = next(d.factors[name] for d in deltas if name in d.factors)
                    a_parts.append(ref_a.new_zeros(delta.rank, in_features))
                    b_parts.append(ref_b.new_zeros(out_features, delta.rank))
            combined[name] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1))
        return LoRADelta(combined, 1.0 / len(deltas) if mode == "mean" else 1.0)


@dataclass
class DeltaBatch:
    """Per-row deltas for one batched forward, in the slot layout of ``add_lora``.

    Attributes:
        factors: module name -> ``(A [S, r, in], B [S, out, r])``; rows of a slot that does not
            use a module hold zeros there.
        scale: ``[S]`` float, per-slot ``s``.
        row_slots: ``[batch]`` int64, the slot of each batch row, ``-1`` for no delta.
        broadcast: every row of any batch size uses slot 0 (one delta for a whole forward);
            ``row_slots`` is then ``[0]``.
    """

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: torch.Tensor
    row_slots: torch.Tensor
    broadcast: bool = False
    _row_adapters: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.row_slots.dim() != 1 or self.row_slots.dtype not in (torch.int32, torch.int64):
            raise DeltaValueError(
                f"row_slots must be a 1-D integer tensor, got {tuple(self.row_slots.shape)} {self.row_slots.dtype}"
            )
        slots = self.scale.shape[0] if self.scale.dim() == 1 else -1
        if slots < 0:
            raise DeltaValueError(f"scale must be 1-D [slots], got shape {tuple(self.scale.shape)}")
        for name, (a, b) in self.factors.items():
            if a.dim() != 3 or b.dim() != 3 or a.shape[0] != slots or b.shape[0] != slots or a.shape[1] != b.shape[2]:
                raise DeltaValueError(
                    f"factors[{name!r}] must be A [S={slots}, r, in] and B [S, out, r], got {tuple(a.shape)} and {tuple(b.shape)}"
                )
        if self.row_slots.numel() and (int(self.row_slots.min()) < -1 or int(self.row_slots.max()) >= slots):
            raise DeltaValueError(f"row_slots must lie in [-1, {slots - 1}], got {self.row_slots.tolist()}")
        if self.broadcast and (slots != 1 or self.row_slots.tolist() != [0]):
            raise DeltaValueError("a broadcast DeltaBatch holds exactly one slot and row_slots == [0]")

    @property
    def num_rows(self) -> int:
        return self.row_slots.shape[0]

    @property
    def has_delta(self) -> bool:
        return bool(self.factors) and bool((self.row_slots >= 0).any())

    def row_adapters(self, name: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Module ``name``'s adapter of every one of ``rows`` batch rows, for
        :func:`~hyco_rag.kernels.add_lora_rows_torch` (gathered on first use, then kept).

        A batch is prepared once per batch composition and hooked in for every step of it, so
        the gather is paid once and each step's hooked call is two batched matmuls.  The
        factors must not change after the first call.
        """
        key = (name, rows)
        cached = self._row_adapters.get(key)
        if cached is None:
            from hyco_rag.kernels import gather_row_adapters

            slots = self.row_slots.expand(rows) if self.broadcast else self.row_slots
            a, b = self.factors[name]
            cached = self._row_adapters[key] = gather_row_adapters(a, b, slots, self.scale)
        return cached

    def validate(self) -> None:
        """Reject NaN/Inf anywhere (factors or scales) before anything touches the model."""
        if not bool(torch.isfinite(self.scale.detach()).all()):
            raise DeltaValueError("delta scales hold NaN/Inf; refusing to apply them")
        for name, (a, b) in self.factors.items():
            _check_finite(name, a, "A")
            _check_finite(name, b, "B")

    @classmethod
    def from_deltas(
        cls,
        deltas: Sequence[LoRADelta | None],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DeltaBatch:
        """One slot per distinct delta object; ``None`` rows get slot -1.

        Ranks differ between requests (a query with 3 passages has rank 3r); factors are
        zero-padded to the largest rank, which adds nothing to ``B (A x)``.
        """
        slot_of: dict[int, int] = {}
        unique: list[LoRADelta] = []
        row_slots = []
        for delta in deltas:
            if delta is None:
                row_slots.append(-1)
                continue
            if not isinstance(delta, LoRADelta):
                raise TypeError(f"each row's delta must be a LoRADelta or None, got {type(delta).__name__}")
            if id(delta) not in slot_of:
                slot_of[id(delta)] = len(unique)
                unique.append(delta)
            row_slots.append(slot_of[id(delta)])
        if unique:
            ref = next(iter(unique[0].factors.values()))[0]
            device = device if device is not None else ref.device
            dtype = dtype if dtype is not None else ref.dtype
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or torch.float32
        max_rank = max((delta.rank for delta in unique), default=1)
        names = list(dict.fromkeys(name for delta in unique for name in delta.factors))
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in names:
            in_features, out_features = _module_shape(unique, name)
            a_stack = torch.zeros(len(unique), max_rank, in_features, device=device, dtype=dtype)
            b_stack = torch.zeros(len(unique), out_features, max_rank, device=device, dtype=dtype)
            for slot, delta in enumerate(unique):
                if name in delta.factors:
                    a, b = delta.factors[name]
                    a_stack[slot, : a.shape[0]] = a.to(device=device, dtype=dtype)
                    b_stack[slot, :, : b.shape[1]] = b.to(device=device, dtype=dtype)
            factors[name] = (a_stack, b_stack)
        scale = torch.tensor([delta.scaling for delta in unique] or [0.0], device=device, dtype=torch.float32)
        if not unique:
            scale = scale[:0]
        return cls(factors, scale, torch.tensor(row_slots, dtype=torch.long, device=device))

    @classmethod
    def broadcast_delta(
        cls, delta: LoRADelta, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DeltaBatch:
        """One delta for every row of whatever batch runs under it."""
        single = cls.from_deltas([delta], device=device, dtype=dtype)
        return cls(single.factors, single.scale, single.row_slots, broadcast=True)


def _module_shape(deltas: Sequence[LoRADelta], name: str) -> tuple[int, int]:
    """(in_features, out_features) of module ``name``, which every delta that has it must agree on."""
    shapes = {(d.factors[name][0].shape[1], d.factors[name][1].shape[0]) for d in deltas if name in d.factors}
    if len(shapes) != 1:
        raise DeltaValueError(f"deltas disagree on the shape of module {name!r}: {sorted(shapes)}")
    return next(iter(shapes))
