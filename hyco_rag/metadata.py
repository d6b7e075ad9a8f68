"""Metadata handling shared by the framework adapters (LangChain documents, LlamaIndex nodes)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["copy_metadata"]


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy, so that editing an output document never edits the stored original.

    Metadata that cannot be deep-copied (an open handle, a lock) still gets a fresh top-level
    dict: the promise "never the same dict" holds either way.
    """
    try:
        return copy.deepcopy(dict(metadata))
    except Exception:  # noqa: BLE001 - any value deepcopy rejects; the shallow copy is still safe
        logger.debug("metadata is not deep-copyable; using a shallow copy", exc_info=True)
        return dict(metadata)
