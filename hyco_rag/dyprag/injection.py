"""Scoped delta application on a served model: find targets, validate, hook, always unhook.

Nothing here writes to a parameter.  Deltas enter through forward hooks registered inside a
context manager; the handles are removed in ``finally``, so after a normal exit *or* an
exception (mid-generation included) the model has no hooks left and bit-identical weights.
Everything that can be wrong with the deltas (unknown module, wrong shape, rank above the
kernel limit, NaN/Inf) is checked *before* the first hook is registered.

Hooks are registered on the modules, but each acts only on forwards of the thread that applied
it: a forward of the same model on another thread sees the unmodified model, or that thread's
own application (the serving engine encodes and prefills new requests on one thread while its
decode thread steps the running batch with their deltas).  On one thread, a second application
while one is active would mix requests, so :meth:`DeltaInjector.apply` refuses to nest.
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
#: model -> the threads with an application in effect on it.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()
#: Held while hooks are registered or removed: torch hands out hook ids from an unlocked class
#: counter, so two threads registering at once could get the same id and lose a hook.
_HOOKS_LOCK = threading.Lock()


class DeltasAlreadyAppliedError(RuntimeError):
    """Deltas are already applied to this model; a second application would mix requests."""


def deltas_active(model: nn.Module, *, on_this_thread: bool = False) -> bool:
    """Whether some :meth:`DeltaInjector.apply` is currently in effect on ``model`` (with
    ``on_this_thread``: one whose hooks act on the calling thread's forwards)."""
    with _REGISTRY_LOCK:
        threads = _ACTIVE.get(model, set())
        return threading.get_ident() in threads if on_this_thread else bool(threads)


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
            DeltasAlreadyAppliedError: another application is active on this model on this thread.
        """
        with self.apply_prepared(self.prepare(deltas)) as state:
            yield state

    @contextlib.contextmanager
    def apply_prepared(self, batch: DeltaBatch) -> Iterator[StepState]:
        """:meth:`apply` for a batch that :meth:`prepare` already checked (no second check).

        The serving engine prepares a batch once per batch composition and hooks it in for
        every forward of that composition; the NaN/shape checks would otherwise run per step.
        """
        thread = threading.get_ident()
        state = StepState(batch, thread=thread)
        with _REGISTRY_LOCK:
            threads = _ACTIVE.setdefault(self.model, set())
            if thread in threads:
                raise DeltasAlreadyAppliedError(
                    "deltas are already applied to this model on this thread: a nested application "
                    "would mix requests; batch the rows into one application"
                )
            threads.add(thread)
        handles = []
        try:
            with _HOOKS_LOCK:
                for name, module in self.targets.items():
                    if name in batch.factors:
                        handles.append(module.register_forward_hook(DeltaHook(name, module, state)))
            yield state
        finally:
            with _HOOKS_LOCK:
                for handle in handles:
                    handle.remove()
            with _REGISTRY_LOCK:
                _ACTIVE.get(self.model, set()).discard(thread)
