import random

import pytest

from hyco_rag.engine.stops import StopSequenceFilter


@pytest.mark.parametrize("seed", range(5))
def test_stop_filter_emits_the_same_text_whole_or_in_any_pieces(seed: int) -> None:
    text = "  The tower was built in 1889.\nQuestion: next one\n  "
    stop = ["\nQuestion:", "zzz"]
    whole = StopSequenceFilter(stop).clean(text)
    assert whole == "The tower was built in 1889."
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    streamed = StopSequenceFilter(stop)
    out = [streamed.feed(p) for p in pieces]
    assert "".join(out) + streamed.finish() == whole
    assert streamed.stopped
    assert not any("Question" in o for o in out)  # a stop sequence is never emitted, even in part


def test_stop_filter_without_stop_sequences_only_strips() -> None:
    cleaner = StopSequenceFilter(None)
    assert cleaner.feed("  \n") == ""  # leading whitespace is dropped
    assert cleaner.feed("a b ") == "a b"  # trailing whitespace held back ...
    assert cleaner.feed(" c") == "  c"  # ... and released when text follows
    assert cleaner.finish() == "" and not cleaner.stopped
    with pytest.raises(ValueError, match="list of strings"):
        StopSequenceFilter("\n")  # type: ignore[arg-type]
