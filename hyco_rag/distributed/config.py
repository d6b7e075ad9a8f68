"""Typed configuration of the Ray deployments (the shape of Ray Serve LLM's ``LLMConfig``).

Everything here is plain data that survives a trip through YAML: ``serve.yaml``'s ``args``
(``serve run`` / KubeRay) and ``hyco-rag serve --ray`` both build a :class:`RayServeConfig`
with :meth:`RayServeConfig.from_dict`, and unknown keys fail with the list of known ones
instead of being ignored.  Nothing here imports Ray or torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hyco_rag.engine.modes import MODE_NAMES

__all__ = ["CompressorSpec", "DeploymentOptions", "EngineSpec", "RayServeConfig", "ServerOptions"]


def _from_dict(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class DeploymentOptions:
    """Replicas and resources of one deployment (passed to ``Deployment.options``).

    ``autoscaling_config`` (Ray Serve's own dict: ``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests`` ...) replaces ``num_replicas`` when set.
    """

    num_replicas: int = field(default=1, metadata={"help": "fixed replica count (ignored with autoscaling_config)"})
    autoscaling_config: dict[str, Any] | None = field(default=None, metadata={"help": "Ray Serve autoscaling bounds"})
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per replica"})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs reserved per replica (fractions share one GPU)"})
    max_ongoing_requests: int | None = field(default=None, metadata={"help": "requests a replica takes at once"})

    def __post_init__(self) -> None:
        _positive_int("num_replicas", self.num_replicas)
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.max_ongoing_requests is not None:
            _positive_int("max_ongoing_requests", self.max_ongoing_requests)
        if self.autoscaling_config is not None and not isinstance(self.autoscaling_config, dict):
            raise ValueError(f"autoscaling_config must be a mapping, got {type(self.autoscaling_config).__name__}")

    def to_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options``."""
        options: dict[str, Any] = {"ray_actor_options": {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus)}}
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            options["num_replicas"] = self.num_replicas
        if self.max_ongoing_requests is not None:
            options["max_ongoing_requests"] = self.max_ongoing_requests
        return options


@dataclass
class EngineSpec:
    """How each generator replica builds its engine.

    Either ``Engine.from_pretrained(model, translator, device)`` with the limits below, or
    ``factory`` (``"package.module:function"``, called with ``factory_kwargs``) returning an
    :class:`~hyco_rag.engine.Engine` (tests serve a tiny random model this way).
    """

    model: str | None = field(default=None, metadata={"help": "served model; None = embedded SmolLM2"})
    translator: str | None = field(default=None, metadata={"help": "DyPRAG translator folder; None = the shipped one"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda ... (None: CUDA if the replica has a GPU)"})
    factory: str | None = field(default=None, metadata={"help": "'module:function' returning an Engine"})
    factory_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of factory"})
    max_batch_size: int = field(default=16, metadata={"help": "rows decoded together per replica"})
    max_queue: int = field(default=64, metadata={"help": "requests waiting per replica before a 429"})
    timeout_s: float | None = field(default=300.0, metadata={"help": "per-request timeout on the replica"})
    delta_cache_size: int = field(default=1024, metadata={"help": "passage deltas cached per replica"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads per replica"})

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "threads"):
            _positive_int(name, getattr(self, name))
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory must be 'module:function', got {self.factory!r}")


@dataclass
class CompressorSpec:
    """How each compressor replica builds its compressor.

    ``target_tokenizer``: budgets of compressing chat modes are counted in the served model's
    tokens, as in one process (default: the tokenizer of :attr:`EngineSpec.model`).
    """

    model: str | None = field(default=None, metadata={"help": "compressor folder; None = the shipped weights"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda ..."})
    factory: str | None = field(default=None, metadata={"help": "'module:function' returning a compressor"})
    factory_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of factory"})
    target_tokenizer: str | None = field(default=None, metadata={"help": "tokenizer counting chat budgets"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads per replica"})

    def __post_init__(self) -> None:
        _positive_int("threads", self.threads)
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory must be 'module:function', got {self.factory!r}")


@dataclass
class ServerOptions:
    """The HTTP app's options (the ``create_app`` arguments of ``hyco-rag serve``)."""

    default_mode: str = "combine"
    api_key: str | None = None
    max_body_bytes: int = 4 << 20
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.default_mode not in MODE_NAMES:
            raise ValueError(f"default_mode must be one of {', '.join(MODE_NAMES)}, got {self.default_mode!r}")
        for name in ("max_body_bytes", "max_tokens_limit", "default_max_tokens"):
            _positive_int(name, getattr(self, name))


@dataclass
class RayServeConfig:
    """The whole application: three deployments and how they talk.

    ``retries``: how many times a request whose replica died before it answered is sent to
    another replica (a stream only until its first text piece went out).
    ``request_timeout_s``: how long the ingress waits for a replica's answer beyond the
    engine's own timeout (``None``: the engine timeout + 60 s) - a replica that never answers
    becomes a 503, never a hang.
    """

    engine: EngineSpec = field(default_factory=EngineSpec)
    compressor: CompressorSpec | None = field(default_factory=CompressorSpec)
    generator_deployment: DeploymentOptions = field(default_factory=DeploymentOptions)
    compressor_deployment: DeploymentOptions = field(default_factory=lambda: DeploymentOptions(num_cpus=0.5))
    ingress_deployment: DeploymentOptions = field(default_factory=lambda: DeploymentOptions(num_cpus=0.25))
    server: ServerOptions = field(default_factory=ServerOptions)
    retries: int = 2
    request_timeout_s: float | None = None
    app_name: str = "hyco-rag"
    route_prefix: str = "/"

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.request_timeout_s is not None and not (
            isinstance(self.request_timeout_s, (int, float)) and self.request_timeout_s > 0
        ):
            raise ValueError(f"request_timeout_s must be > 0 or None, got {self.request_timeout_s!r}")

    @property
    def wait_s(self) -> float | None:
        """Longest the ingress waits for one answer (``None``: the engine waits forever too)."""
        if self.request_timeout_s is not None:
            return float(self.request_timeout_s)
        return None if self.engine.timeout_s is None else float(self.engine.timeout_s) + 60.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RayServeConfig:
        """From ``serve.yaml``'s ``args`` (nested mappings; unknown keys are errors)."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        parts: dict[str, Any] = {"engine": _from_dict(EngineSpec, data.pop("engine", None), "engine")}
        if "compressor" in data and data["compressor"] is None:
            data.pop("compressor")
            parts["compressor"] = None
        elif "compressor" in data:
            parts["compressor"] = _from_dict(CompressorSpec, data.pop("compressor"), "compressor")
        for name in ("generator_deployment", "compressor_deployment", "ingress_deployment"):
            if name in data:
                parts[name] = _from_dict(DeploymentOptions, data.pop(name), name)
        if "server" in data:
            parts["server"] = _from_dict(ServerOptions, data.pop("server"), "server")
        return cls(**parts, **data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
