"""Scaling out on Ray (the ``ray`` extra: ``pip install 'hyco-rag[ray]'``; ``docs/scaling.md``).

* :mod:`hyco_rag.distributed.serve` - Ray Serve deployments of the OpenAI-compatible server:
  the same FastAPI app as the ingress, generator (engine) and compressor deployments, each with
  its own replicas, autoscaling and resources; :func:`~hyco_rag.distributed.serve.build_app`
  is the ``serve run`` / KubeRay application builder.
* :mod:`hyco_rag.distributed.client` - the ingress's engine: forwards to the deployments.
* :mod:`hyco_rag.distributed.data` - ``hyco-rag compress --ray``: Ray Data over a corpus.
* :mod:`hyco_rag.distributed.config` - the typed configuration of all of it.

Importing this package (or any of its modules) does not import Ray; the functions that need it
raise a ``ValueError`` naming the extra when it is missing.
"""

from hyco_rag.distributed.config import CompressorSpec, DeploymentOptions, EngineSpec, RayServeConfig, ServerOptions

__all__ = ["CompressorSpec", "DeploymentOptions", "EngineSpec", "RayServeConfig", "ServerOptions"]
