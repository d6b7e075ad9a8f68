"""The LlamaIndex query-engine path of DyPRAG: retrieved nodes become deltas of that query's answer.

A response synthesizer calls the LLM with a prompt and nothing else, so the nodes of a query
cannot travel to :class:`~llama_index.llms.hyco.HyCoLLM` as call arguments.
`DyPRAGNodePostprocessor` therefore *binds* them to the query with
:func:`llama_index.llms.hyco.bind_documents`: a :class:`contextvars.ContextVar`, so the binding
is private to the task (``aquery``) or thread (``query``) that retrieved them.  HyCoLLM uses it
only for a generation whose prompt asks exactly that query, and the binding is scoped to the
query: every LlamaIndex query starts without a binding and, when it ends, restores the one in
force before it (see :mod:`llama_index.llms.hyco.base`).  So concurrent queries never see each
other's passages, and a later query or call on a reused thread never sees an old query's.

What the synthesizer then gets, per mode (:class:`hyco_rag.engine.Mode`):

==================  ==================================================  ======================
mode                nodes handed on                                     deltas of the answer
==================  ==================================================  ======================
``none``            text emptied (closed book)                          no
``rag``             unchanged text                                      no
``hyco``            unchanged text (compressed in the core prompt)      no
``dyprag``          text emptied: no passage token reaches the prompt   from the nodes' text
``combine``         unchanged text                                      from the nodes' text
``combine-hyco``    unchanged text (compressed in the core prompt)      from the nodes' text
``hybrid``          unchanged text (soft tokens + compressed text in    no
                    the core prompt)
``combine-hybrid``  unchanged text (as ``hybrid``)                      from the nodes' text
==================  ==================================================  ======================

One output node per input node, with its ``id_``, ``score`` and relationships and a *copy* of
its metadata plus ``metadata["dyprag"]`` (mode, whether the text went to deltas / context, and
for emptied nodes the original text, so ``response.source_nodes`` still cite it).  That key is
excluded from the LLM and embed metadata; an emptied node excludes all its metadata from the
LLM, so the context really is empty.

``prompt="core"`` (default) makes HyCoLLM answer with the core QA prompt, as
:meth:`hyco_rag.engine.Engine.answer` does (the wording the translator was trained with; the
synthesizer's template is not used; ``hyco`` modes compress the passages there).
``prompt="synthesizer"`` keeps the synthesizer's prompt and templates and only adds the deltas
(compress its context with ``HyCoNodePostprocessor`` then); the ``hybrid`` modes need the core
prompt (their soft tokens are placed in it), so they refuse ``prompt="synthesizer"`` with a
``ValueError``: when the postprocessor is built if the mode is known then, else when it binds.
"""

from __future__ import annotations

import logging
from typing import Any

from hyco_rag.engine.modes import Mode
from hyco_rag.metadata import copy_metadata
from llama_index.core.bridge.pydantic import Field, model_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, Node, NodeWithScore, QueryBundle, TextNode
from llama_index.llms.hyco import HyCoLLM, bind_documents
from llama_index.llms.hyco.base import PROMPT_STYLES, _install_query_scopes, check_prompt_style
from llama_index.postprocessor.hyco.base import _with_key

logger = logging.getLogger(__name__)

__all__ = ["DyPRAGNodePostprocessor"]


def _passage_text(node: BaseNode) -> str:
    return node.get_content(metadata_mode=MetadataMode.NONE)


def _emptied(node: BaseNode) -> dict[str, Any]:
    if isinstance(node, TextNode):
        return {"text": ""}
    if isinstance(node, Node) and node.text_resource is not None:
        return {"text_resource": node.text_resource.model_copy(update={"text": ""})}
    return {}


class DyPRAGNodePostprocessor(BaseNodePostprocessor):
    """Turn a query's retrieved nodes into DyPRAG deltas of the answer (see the module docstring).

    Example:
        ```python
        from llama_index.llms.hyco import HyCoLLM
        from llama_index.postprocessor.hyco import DyPRAGNodePostprocessor

        llm = HyCoLLM(mode="dyprag")
        engine = index.as_query_engine(llm=llm, node_postprocessors=[DyPRAGNodePostprocessor(llm)])
        response = engine.query("Who won Super Bowl 50?")
        ```

    Put it first when other postprocessors follow (e.g. ``HyCoNodePostprocessor``): it binds the
    full node text, and later steps only change what reaches the synthesizer's prompt.
    """

    llm: Any = Field(default=None, exclude=True, description="The HyCoLLM that answers (gives the default mode).")
    mode: str | None = Field(
        default=None,
        description="none, rag, hyco, dyprag, combine, combine-hyco, hybrid or combine-hybrid; None: the LLM's mode.",
    )
    prompt: str = Field(default="core", description="'core' QA prompt, or keep the 'synthesizer' prompt (not with hybrid modes).")
    metadata_key: str = Field(default="dyprag", min_length=1, description="Metadata key of the per-node record.")

    def __init__(self, llm: Any = None, **kwargs: Any) -> None:
        super().__init__(llm=llm, **kwargs)
        _install_query_scopes()  # before the first query starts, so its binding ends with it

    @model_validator(mode="after")
    def _check(self) -> DyPRAGNodePostprocessor:
        if self.llm is not None and not isinstance(self.llm, HyCoLLM):
            raise TypeError(
                f"DyPRAGNodePostprocessor needs a HyCoLLM (other LLMs would ignore the deltas), got {type(self.llm).__name__}"
            )
        if self.llm is None and self.mode is None:
            raise ValueError("give the HyCoLLM that answers, or a mode")
        if self.mode is not None:
            self.mode = Mode.parse(self.mode).value
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt must be one of {PROMPT_STYLES}, got {self.prompt!r}")
        # The LLM's mode may still change before a query: it is checked again when binding.
        check_prompt_style(Mode.parse(self.effective_mode), self.prompt)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "DyPRAGNodePostprocessor"

    @property
    def effective_mode(self) -> str:
        return self.mode or self.llm.mode

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None or not query_bundle.query_str.strip():
            raise ValueError("DyPRAGNodePostprocessor binds passages to a query: pass query_bundle (or query_str)")
        if isinstance(nodes, (NodeWithScore, BaseNode)):
            raise TypeError("nodes must be a list of NodeWithScore, not a single node")
        mode = self.effective_mode
        chosen = Mode.parse(mode)
        texts = [_passage_text(n.node) for n in nodes]
        # Ends with the query (see the module docstring); a direct call outside a query engine
        # leaves it in force in this context until the next query starts.  The binding refuses
        # a hybrid mode with prompt="synthesizer" (the LLM's mode may have changed since).
        bind_documents(query_bundle.query_str, [t for t in texts if t.strip()], mode=mode, prompt=self.prompt)
        key = self.metadata_key
        out = []
        for item, text in zip(nodes, texts):
            node = item.node
            record: dict[str, Any] = {"mode": mode, "in_deltas": chosen.uses_deltas, "in_context": chosen.uses_context}
            update: dict[str, Any] = {
                "relationships": dict(node.relationships),
                "excluded_embed_metadata_keys": _with_key(node.excluded_embed_metadata_keys, key),
            }
            metadata = copy_metadata(node.metadata)
            if chosen.uses_context:
                update["excluded_llm_metadata_keys"] = _with_key(node.excluded_llm_metadata_keys, key)
            else:
                record["text"] = text
                update.update(_emptied(node))
                update["excluded_llm_metadata_keys"] = _with_key(list(metadata), key)
            metadata[key] = record
            update["metadata"] = metadata
            out.append(NodeWithScore(node=node.model_copy(update=update), score=item.score))
        logger.debug("bound %d passage(s) to %r in mode %s", sum(bool(t.strip()) for t in texts), query_bundle.query_str, mode)
        return out

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        # Cheap (no model work), and it must run in the caller's task: the binding is a context
        # variable, and the default implementation's worker thread would keep it to itself.
        return self._postprocess_nodes(nodes, query_bundle)
