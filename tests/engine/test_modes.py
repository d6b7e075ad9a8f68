import subprocess
import sys

import pytest

from hyco_rag.engine.modes import MODE_NAMES, Mode


def test_one_spelling_per_mode_and_what_each_uses():
    assert MODE_NAMES == ("none", "rag", "hyco", "dyprag", "combine", "combine-hyco", "hybrid", "combine-hybrid")
    uses = {m.value: (m.uses_context, m.compresses, m.uses_soft_tokens, m.uses_deltas) for m in Mode}
    assert uses == {
        "none": (False, False, False, False),
        "rag": (True, False, False, False),
        "hyco": (True, True, False, False),
        "dyprag": (False, False, False, True),
        "combine": (True, False, False, True),
        "combine-hyco": (True, True, False, True),
        "hybrid": (True, True, True, False),
        "combine-hybrid": (True, True, True, True),
    }
    assert Mode.parse("combine-hyco") is Mode.COMBINE_HYCO and str(Mode.HYCO) == "hyco"


@pytest.mark.parametrize("bad", ["closed-book", "combine_hyco", "RAG", "", None, 3])
def test_other_spellings_are_refused_naming_the_choices(bad):
    with pytest.raises(ValueError, match="none, rag, hyco, dyprag, combine, combine-hyco, hybrid, combine-hybrid"):
        Mode.parse(bad)


def test_modes_import_without_torch():
    code = "import sys, hyco_rag.engine.modes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
