"""HyCo compression as a LlamaIndex node postprocessor.

`HyCoNodePostprocessor` shrinks each retrieved node's text with the query-aware HyCo model of
:mod:`hyco_rag.compression`. Unlike the LongLLMLingua postprocessor it never joins the nodes
and re-splits them: each input node gives one output node (or none, when it compresses to
nothing and ``drop_empty=True``) that keeps its ``id_``, ``score`` and relationships and gets
a *copy* of its metadata plus ``metadata["hyco"]`` stats. The stats key is added to the
node's excluded LLM/embed metadata keys, so the stats never end up in the prompt.

Nodes without text to compress (an image node with no caption, a media-only ``Node``) pass
through unchanged. `_apostprocess_nodes` is native async: it awaits the core ``acompress``,
which batches concurrent requests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hyco_rag.compression.adapters import (
    LazyCompressor,
    check_adapter_options,
    compress_options,
    reject_boolean,
)
from hyco_rag.compression.chain import MAX_HOPS
from hyco_rag.metadata import copy_metadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, Node, NodeWithScore, QueryBundle, TextNode

logger = logging.getLogger(__name__)

__all__ = ["HyCoNodePostprocessor"]


def _has_media(node: BaseNode) -> bool:
    if isinstance(node, ImageNode):
        return bool(node.image or node.image_path or node.image_url)
    if isinstance(node, Node):
        return any(r is not None for r in (node.image_resource, node.audio_resource, node.video_resource))
    return False


def _text_of(node: BaseNode) -> str | None:
    """The text to compress, or None for a node that has none (it then passes through)."""
    if isinstance(node, TextNode):
        text = node.text
    elif isinstance(node, Node) and node.text_resource is not None:
        text = node.text_resource.text or ""
    else:
        return None
    if not text.strip() and _has_media(node):
        return None
    return text


def _with_key(keys: list[str], key: str) -> list[str]:
    return list(keys) if key in keys else [*keys, key]


def _with_text(node: BaseNode, text: str, metadata: dict[str, Any], key: str) -> BaseNode:
    """A copy of ``node`` with new text and metadata; id, relationships and the rest kept.

    The stats key joins the excluded LLM/embed metadata keys: LlamaIndex renders metadata
    into the prompt, and stats there would cost the tokens compression just saved.
    """
    update: dict[str, Any] = {
        "metadata": metadata,
        "relationships": dict(node.relationships),
        "excluded_llm_metadata_keys": _with_key(node.excluded_llm_metadata_keys, key),
        "excluded_embed_metadata_keys": _with_key(node.excluded_embed_metadata_keys, key),
    }
    if isinstance(node, TextNode):
        update["text"] = text
    elif isinstance(node, Node) and node.text_resource is not None:
        # keep the text resource's other fields (path, url, mimetype)
        update["text_resource"] = node.text_resource.model_copy(update={"text": text})
    else:  # _text_of() never hands such a node over
        raise TypeError(f"cannot set the text of a {type(node).__name__}")
    return node.model_copy(update=update)


class HyCoNodePostprocessor(BaseNodePostprocessor):
    """Query-aware HyCo compression of retrieved nodes, one output node per input node.

    Example:
        ```python
        from llama_index.postprocessor.hyco import HyCoNodePostprocessor

        postprocessor = HyCoNodePostprocessor(rate=0.25)  # nothing is loaded yet
        query_engine = index.as_query_engine(similarity_top_k=5, node_postprocessors=[postprocessor])
        ```

    At most one of ``rate``, ``target_tokens`` and ``threshold`` picks the budget; with none,
    the core compressor's default budget applies. The model is loaded on first use, on the
    auto-detected device; pass ``compressor=`` to share one already built.
    """

    model_name_or_path: str | None = Field(
        default=None, description="Folder saved by the core HyCoCompressor; None: the shipped weights."
    )
    device: str | None = Field(default=None, description="Torch device; None: auto-detected.")
    compressor: Any = Field(default=None, exclude=True, description="An already-built hyco_rag.compression.HyCoCompressor.")
    rate: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False, description="Fraction of tokens kept.")
    target_tokens: int | None = Field(default=None, ge=1, strict=True, description="One token budget across all nodes of a call.")
    threshold: float | None = Field(
        default=None, ge=0, le=1, allow_inf_nan=False, description="Keep words whose keep score reaches this."
    )
    target_tokenizer: Any = Field(
        default=None, exclude=True, description="Tokenizer (or name) of the reading LLM; budgets count its tokens."
    )
    min_tokens_per_passage: int = Field(default=0, ge=0, strict=True, description="Floor of tokens kept per node.")
    drop_empty: bool = Field(default=True, description="Leave out nodes that compress to nothing.")
    reorder: bool = Field(default=False, description="Most relevant first instead of the input order.")
    force_tokens: tuple[str, ...] = Field(default=(), description="Words always kept.")
    hops: int = Field(
        default=1, ge=1, le=MAX_HOPS, strict=True, description="Evidence-chain hops (multi-hop questions; one scoring pass each)."
    )
    metadata_key: str = Field(default="hyco", min_length=1, description="Metadata key of the per-node stats.")

    _loader: LazyCompressor = PrivateAttr(default_factory=LazyCompressor)

    @field_validator("rate", "threshold", "target_tokens", mode="before")
    @classmethod
    def _no_boolean_budget(cls, value: Any, info: Any) -> Any:
        return reject_boolean(value, info.field_name)

    @model_validator(mode="after")
    def _check_options(self) -> HyCoNodePostprocessor:
        check_adapter_options(self)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "HyCoNodePostprocessor"

    @property
    def core(self) -> Any:
        """The core `hyco_rag.compression.HyCoCompressor`: ``compressor``, or loaded on first access."""
        return self._loader.core_for(self)

    # -- the work, shared by the sync and async paths ---------------------------------------
    @staticmethod
    def _prepare(nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[int], list[str]]:
        if query_bundle is None:
            raise ValueError("HyCoNodePostprocessor compresses for a query: pass query_bundle or query_str")
        if isinstance(nodes, (NodeWithScore, BaseNode)):
            raise TypeError("nodes must be a list of NodeWithScore, not a single node")
        positions, texts = [], []
        for position, item in enumerate(nodes):
            if not isinstance(item, NodeWithScore):
                raise TypeError(f"nodes[{position}] is a {type(item).__name__}, expected a NodeWithScore")
            text = _text_of(item.node)
            if text is not None:
                positions.append(position)
                texts.append(text)
        return query_bundle.query_str, positions, texts

    def _assemble(self, nodes: Sequence[NodeWithScore], positions: list[int], result: Any) -> list[NodeWithScore]:
        compressed: dict[int, NodeWithScore | None] = {}
        ranked: list[int] = []
        for passage in result.passages:
            position = positions[passage.index]
            ranked.append(position)
            if self.drop_empty and (passage.dropped or not passage.text.strip()):
                compressed[position] = None
                continue
            original = nodes[position]
            metadata = copy_metadata(original.node.metadata)
            metadata[self.metadata_key] = passage.stats(index=position)
            node = _with_text(original.node, passage.text, metadata, self.metadata_key)
            compressed[position] = NodeWithScore(node=node, score=original.score)
        sent = set(positions)
        if self.reorder:  # compressed nodes most relevant first, then untouched ones in input order
            order = ranked + [p for p in range(len(nodes)) if p not in sent]
        else:
            order = list(range(len(nodes)))
        output = []
        for position in order:
            if position not in sent:
                output.append(nodes[position])  # no text to compress: passes through untouched
            elif compressed.get(position) is not None:
                output.append(compressed[position])  # type: ignore[arg-type]
        return output

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query, positions, texts = self._prepare(nodes, query_bundle)
        if not texts:
            return list(nodes)
        result = self.core.compress(query, texts, **compress_options(self))
        return self._assemble(nodes, positions, result)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, positions, texts = self._prepare(nodes, query_bundle)
        if not texts:
            return list(nodes)
        core = await self._loader.acore_for(self)  # loading reads weights: off the event loop
        result = await core.acompress(query, texts, **compress_options(self))
        return self._assemble(nodes, positions, result)
