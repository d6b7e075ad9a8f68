"""Scoped delta application on a served model: find targets, validate, hook, always unhook.

Nothing here writes to a parameter.  Deltas enter through forward hooks registered inside a
context manager; the handles are removed in ``finally``, so after a normal exit *or* an
exception (mid-generation included) the model has no hooks left and bit-identical weights.
Everything that can be wrong with the deltas (unknown module, wrong shape, rank above the
kernel limit, NaN/Inf) is checked *before* the first hook is registered.

Hooks are global to a module, so two applications on one model at the same time would leak
one request's delta into the other's forward.  :meth:`DeltaInjector.apply` therefore refuses
to nest or overlap on a model; concurrent callers serialise on :func:`model_lock`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hyco_rag.dyprag.config import DeltaConfig
from hyco_rag.dyprag.delta import DeltaBatch, DeltaValueError, LoRADelta
from hyco_rag.dyprag.layer import DeltaHook, StepState

logger = logging.getLogger(__name__)

_REGISTRY_LOCK = threading.Lock()
_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


class DeltasAlreadyAppliedError(RuntimeError):
    """Deltas are already applied to this model; a second application would mix requests."""


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises every delta application (and generation) on ``model``."""
    with _REGISTRY_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


def deltas_active(model: nn.Module) -> bool:
    """Whether some :meth:`DeltaInjector.apply` is currently in effect on ``model``."""
    with _REGISTRY_LOCK:
        return _ACTIVE.get(model, 0) > 0


def find_target_modules(model: nn.Module, config: DeltaConfig) -> dict[str, nn.Linear]:
    """Target linears of ``model`` in ``named_modules()`` order.

    Raises:
        ValueError: nothing matches, or a match is not an ``nn.Linear``.
    """
    targets: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not name or not config.matches(name):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target module {name!r} is a {type(module).__name__}, not nn.Linear; "
                "narrow target_modules so it only matches linear layers"
            )
        targets[name] = module
    if not targets:
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no module of {type(model).__name__}; "
            "pass names or suffixes such as ['gate_proj', 'up_proj', 'down_proj']"
        )
    return targets


def module_type(name: str) -> str:
    """The module's own name without its layer path (``model.layers.3.mlp.up_proj`` -> ``up_proj``)."""
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> int:
    """The first integer path component (the decoder layer), or 0 when there is none."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return 0


class DeltaInjector:
    """Applies per-row LoRA deltas to ``model``'s target linears, scoped by a context manager.

    >>> injector = DeltaInjector(model)                        # default: MLP gate/up/down
    >>> with injector.apply([delta_q1, None, delta_q3]):       # one delta (or none) per row
    ...     model.generate(**batch)
    """

    def __init__(self, model: nn.Module, config: DeltaConfig | None = None) -> None:
        self.model = model
        self.config = config or DeltaConfig()
        self.targets = find_target_modules(model, self.config)

    @property
    def target_shapes(self) -> dict[str, tuple[int, int]]:
        """``name -> (in_features, out_features)`` of every target."""
        return {name: (module.in_features, module.out_features) for name, module in self.targets.items()}

    def _param_spec(self) -> tuple[torch.device, torch.dtype]:
        weight = next(iter(self.targets.values())).weight
        return weight.device, weight.dtype

    def prepare(self, deltas: LoRADelta | Sequence[LoRADelta | None] | DeltaBatch) -> DeltaBatch:
        """Convert and check deltas for this model: target names, shapes, rank, finiteness.

        Raises:
            DeltaValueError: with the problem named; the model is not touched.
        """
        from hyco_rag.kernels import MAX_RANK

        device, dtype = self._param_spec()
        if isinstance(deltas, DeltaBatch):
            batch = deltas
        elif isinstance(deltas, LoRADelta):
            batch = DeltaBatch.broadcast_delta(deltas, device=device, dtype=dtype)
        else:
            batch = DeltaBatch.from_deltas(list(deltas), device=device, dtype=dtype)
        shapes = self.target_shapes
        for name, (a, b) in batch.factors.items():
            if name not in shapes:
                raise DeltaValueError(
                    f"delta for module {name!r}, which is not a target of this model "
                    f"({len(shapes)} targets, e.g. {next(iter(shapes))!r})"
                )
            in_features, out_features = shapes[name]
            if a.shape[2] != in_features or b.shape[1] != out_features:
                raise DeltaValueError(
                    f"delta for {name!r} maps {a.shape[2]} -> {b.shape[1]} features, but the module is "
                    f"{in_features} -> {out_features}; was it made for another model?"
                )
            if a.shape[1] > MAX_RANK:
                raise DeltaValueError(
                    f"delta for {name!r} has rank {a.shape[1]} > {MAX_RANK} (the kernels' limit); "
                    "combine fewer passages per request"
                )
            if a.device != device or a.dtype != dtype:
                batch.factors[name] = (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
        if batch.scale.device != device:
            batch.scale = batch.scale.to(device)
        batch.validate()
        return batch

    @contextlib.contextmanager
    def apply(self, deltas: LoRADelta | Sequence[LoRADelta | None] | DeltaBatch) -> Iterator[StepState]:
        """Hook the deltas in for the duration of the ``with`` block.

        ``deltas`` is one :class:`LoRADelta` for every row, a sequence with one delta (or
        ``None``) per batch row, or a :class:`DeltaBatch`.  Yields the shared
        :class:`StepState` (``state.calls`` counts hooked module calls).

        Raises:
            DeltaValueError: invalid deltas (nothing applied).
            DeltasAlreadyAppliedError: another application is active on this model.
        """
        with self.apply_prepared(self.prepare(deltas)) as state:
            yield state

    @contextlib.contextmanager
    def apply_prepared(self, batch: DeltaBatch) -> Iterator[StepState]:
        """:meth:`apply` for a batch that :meth:`prepare` already checked (no second check).

        The serving engine prepares a batch once per batch composition and hooks it in for
        every forward of that composition; the NaN/shape checks would otherwise run per step.
        """
        state = StepState(batch)
        with _REGISTRY_LOCK:
            if _ACTIVE.get(self.model, 0) > 0:
                raise DeltasAlreadyAppliedError(
                    "deltas are already applied to this model: nested or concurrent applications "
                    "would mix requests; serialise on hyco_rag.dyprag.model_lock(model) or batch the rows"
                )
            _ACTIVE[self.model] = 1
        handles = []
        try:
            for name, module in self.targets.items():
                if name in batch.factors:
                    handles.append(module.register_forward_hook(DeltaHook(name, module, state)))
            yield state
        finally:
            for handle in handles:
                handle.remove()
            with _REGISTRY_LOCK:
                _ACTIVE[self.model] = 0
