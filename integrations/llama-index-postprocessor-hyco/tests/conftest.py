"""Fixtures of the llama-index-postprocessor-hyco tests, all real and offline (:mod:`hyco_rag.compression.testing`).

``hyco_core``: the core compressor with the shipped weights; ``index``: a `VectorStoreIndex`
over an in-memory `SimpleVectorStore` of demo-corpus passages embedded by all-MiniLM-L6-v2;
`Settings.llm` stays the MockLLM for the whole session.
"""

from hyco_rag.compression.testing import llama_index_fixtures

_offline_llm, hyco_core, index = llama_index_fixtures()
