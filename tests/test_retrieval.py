import pytest

from hyco_rag.data import Passage
from hyco_rag.retrieval import DenseIndex


def test_dense_index_ranks_the_relevant_passage_first(minilm):
    index = DenseIndex(minilm)
    index.add([
        Passage("The Eiffel Tower is in Paris.", "Paris", "a"),
        Passage("Photosynthesis turns light into chemical energy.", "Biology", "b"),
        Passage("The Broncos won Super Bowl 50.", "Football", "c"),
    ])
    hits = index.search("Which team won the Super Bowl?", k=2)
    assert [h.passage.id for h in hits][0] == "c" and len(hits) == 2
    assert hits[0].score > hits[1].score
    assert len(index.search("anything", k=10)) == 3


def test_dense_index_errors(minilm):
    index = DenseIndex(minilm)
    with pytest.raises(ValueError, match="empty"):
        index.search("q")
    index.add([Passage("x")])
    with pytest.raises(ValueError, match="k must be"):
        index.search("q", k=0)
