"""Loaders of the shared QA sets: one schema, labels that point at the right text."""

from __future__ import annotations

import pytest

from hyco_rag.data import (
    DataNotFoundError,
    load_2wikimultihopqa,
    load_dataset,
    load_demo_corpus,
    load_demo_questions,
    load_hotpotqa,
    load_musique,
    load_squad,
    load_strategyqa,
    squad_paragraphs,
)


def test_squad_gold_plus_same_article_distractors(shared_data):
    examples = load_squad(num_distractors=9, seed=3, limit=50)
    assert len(examples) == 50
    for example in examples:
        assert len(example.passages) == 10 and len(example.gold) == 1
        assert len({p.title for p in example.passages}) == 1  # same article
        assert len({p.id for p in example.passages}) == 10  # no duplicates
        gold = example.passages[example.gold[0]]
        for span in example.answer_spans:
            assert span.passage == example.gold[0]
            assert gold.text[span.start : span.end] in example.answers
    positions = {example.gold[0] for example in examples}
    assert len(positions) > 3  # gold lands at random positions
    again = load_squad(num_distractors=9, seed=3, limit=50)
    assert [e.gold for e in again] == [e.gold for e in examples]


def test_squad_v2_files_skip_unanswerable(shared_data):
    from hyco_rag.data import SQUAD_CS224N_DEV_PARAGRAPHS

    examples = load_squad(SQUAD_CS224N_DEV_PARAGRAPHS[0], num_distractors=2, limit=200)
    assert all(example.answers for example in examples)
    paragraph = next(squad_paragraphs(SQUAD_CS224N_DEV_PARAGRAPHS[0]))
    assert paragraph.context and all(answers for _, answers in paragraph.questions)


@pytest.mark.parametrize("loader", [load_hotpotqa, load_2wikimultihopqa])
def test_supporting_sentences_point_inside_their_passages(shared_data, loader):
    for example in loader(limit=30):
        assert example.gold and example.answers[0]
        for passage_index, sentence_index in example.supporting_sentences:
            start, end = example.passages[passage_index].sentences[sentence_index]
            assert 0 <= start < end <= len(example.passages[passage_index].text)


def test_musique_and_strategyqa(shared_data):
    musique = load_musique(limit=20)
    assert all(len(e.passages) == 20 and len(e.gold) >= 2 for e in musique)
    strategy = load_strategyqa(limit=20)
    assert all(e.answers[0] in {"yes", "no"} and e.gold == list(range(len(e.passages))) for e in strategy)


def test_unknown_dataset_and_missing_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("nq")
    monkeypatch.setenv("HYCO_RAG_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="missing"):
        load_squad("squad/absent.json")


def test_demo_corpus_ships_with_the_package():
    corpus = load_demo_corpus()
    questions = load_demo_questions()
    assert len(corpus) >= 300 and all(p.text and p.title for p in corpus)
    ids = {p.id for p in corpus}
    assert questions and all(q.passage_id in ids and q.answers for q in questions)
    by_id = {p.id: p.text for p in corpus}
    assert all(any(a in by_id[q.passage_id] for a in q.answers) for q in questions)
