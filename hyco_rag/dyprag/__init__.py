"""DyPRAG: retrieved passages become per-request LoRA deltas on a served model.

Data flows one way::

    passages --PassageEncoder--> embeddings --ParameterTranslator--> LoRADelta per passage
             --LoRADelta.combine--> one delta per request --DeltaInjector.apply--> hooked forward

:class:`hyco_rag.engine.Engine` serves it (modes ``dyprag``, ``combine``, ``combine-hyco``;
continuous batching with a delta per row, streaming, async).  See ``docs/dyprag.md``.
"""

from hyco_rag.dyprag.config import COMBINE_MODES, DEFAULT_TARGET_MODULES, DeltaConfig
from hyco_rag.dyprag.delta import DeltaBatch, DeltaValueError, LoRADelta
from hyco_rag.dyprag.encoding import PassageEncoder
from hyco_rag.dyprag.injection import (
    DeltaInjector,
    DeltasAlreadyAppliedError,
    deltas_active,
    find_target_modules,
)
from hyco_rag.dyprag.layer import lora_delta_autograd
from hyco_rag.dyprag.translator import (
    DEFAULT_TRANSLATOR_DIR,
    ParameterTranslator,
    TranslatorConfig,
    TranslatorMismatchError,
    combine_deltas,
    model_identity,
)

__all__ = [
    "COMBINE_MODES",
    "DEFAULT_TARGET_MODULES",
    "DEFAULT_TRANSLATOR_DIR",
    "DeltaBatch",
    "DeltaConfig",
    "DeltaInjector",
    "DeltaValueError",
    "DeltasAlreadyAppliedError",
    "LoRADelta",
    "ParameterTranslator",
    "PassageEncoder",
    "TranslatorConfig",
    "TranslatorMismatchError",
    "combine_deltas",
    "deltas_active",
    "find_target_modules",
    "lora_delta_autograd",
    "model_identity",
]
