import langchain_hyco

EXPECTED_ALL = {
    "ChatHyCo",
    "HyCoCompressor",
    "HyCoRetriever",
    "__version__",
}


def test_all_imports() -> None:
    assert set(langchain_hyco.__all__) == EXPECTED_ALL
    for name in langchain_hyco.__all__:
        assert getattr(langchain_hyco, name) is not None
