"""The one list of request modes: what a request does with its documents.

=================  ====================  ==================  ======================
mode               passages in prompt    compressed (HyCo)   DyPRAG deltas
=================  ====================  ==================  ======================
``none``           no (closed book)      -                   no
``rag``            yes                   no                  no
``hyco``           yes                   yes                 no
``dyprag``         no                    -                   yes
``combine``        yes                   no                  yes
``combine-hyco``   yes                   yes                 yes
=================  ====================  ==================  ======================

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

    def __str__(self) -> str:
        return self.value

    @property
    def uses_context(self) -> bool:
        """Passages (full or compressed) go into the prompt."""
        return self in (Mode.RAG, Mode.HYCO, Mode.COMBINE, Mode.COMBINE_HYCO)

    @property
    def compresses(self) -> bool:
        """The prompt copy of the passages is compressed by HyCo first."""
        return self in (Mode.HYCO, Mode.COMBINE_HYCO)

    @property
    def uses_deltas(self) -> bool:
        """The passages become DyPRAG LoRA deltas of the served model."""
        return self in (Mode.DYPRAG, Mode.COMBINE, Mode.COMBINE_HYCO)

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
