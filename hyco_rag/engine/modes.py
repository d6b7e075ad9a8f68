"""The one list of request modes: what a request does with its documents.

===================  ====================  ==================  =============  ==============
mode                 passages in prompt    compressed (HyCo)   soft tokens    DyPRAG deltas
===================  ====================  ==================  =============  ==============
``none``             no (closed book)      -                   no             no
``rag``              yes                   no                  no             no
``hyco``             yes                   yes                 no             no
``dyprag``           no                    -                   no             yes
``combine``          yes                   no                  no             yes
``combine-hyco``     yes                   yes                 no             yes
``hybrid``           yes (kept text)       yes                 yes            no
``combine-hybrid``   yes (kept text)       yes                 yes            yes
===================  ====================  ==================  =============  ==============

``hybrid`` is HyCo2's two views together: the hybrid adapter's soft tokens (the global view,
:mod:`hyco_rag.hybrid`) followed by the compressor's kept text (the local view), under one
budget in which the soft tokens count as tokens.

Every path (CLI, LangChain, LlamaIndex, the OpenAI-compatible server, benchmarks, docs) spells
modes exactly like this; :meth:`Mode.parse` names the choices when it gets anything else.  The
deltas always come from the full passages; compression shortens only the prompt copy.

This module imports nothing heavy, so integrations can validate a mode without importing torch.
"""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """A request mode; its value is the one spelling used everywhere."""

    NONE = "none"
    RAG = "rag"
    HYCO = "hyco"
    DYPRAG = "dyprag"
    COMBINE = "combine"
    COMBINE_HYCO = "combine-hyco"
    HYBRID = "hybrid"
    COMBINE_HYBRID = "combine-hybrid"

    def __str__(self) -> str:
        return self.value

    @property
    def uses_context(self) -> bool:
        """Passages (full or compressed) go into the prompt."""
        return self in (Mode.RAG, Mode.HYCO, Mode.COMBINE, Mode.COMBINE_HYCO, Mode.HYBRID, Mode.COMBINE_HYBRID)

    @property
    def compresses(self) -> bool:
        """The prompt copy of the passages is compressed by HyCo first."""
        return self in (Mode.HYCO, Mode.COMBINE_HYCO, Mode.HYBRID, Mode.COMBINE_HYBRID)

    @property
    def uses_soft_tokens(self) -> bool:
        """The hybrid adapter turns the passages into soft tokens placed before the kept text."""
        return self in (Mode.HYBRID, Mode.COMBINE_HYBRID)

    @property
    def uses_deltas(self) -> bool:
        """The passages become DyPRAG LoRA deltas of the served model."""
        return self in (Mode.DYPRAG, Mode.COMBINE, Mode.COMBINE_HYCO, Mode.COMBINE_HYBRID)

    @classmethod
    def parse(cls, value: object) -> Mode:
        """``value`` as a :class:`Mode`; a ``ValueError`` naming the choices otherwise."""
        if isinstance(value, Mode):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ValueError(f"mode must be one of {', '.join(MODE_NAMES)}; got {value!r}")


#: Every mode's spelling, in table order.
MODE_NAMES: tuple[str, ...] = tuple(mode.value for mode in Mode)
