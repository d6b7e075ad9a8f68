"""Training passages and the token sequences both stages train on.

Each training passage is a SQuAD v1.1 *train* paragraph (``squad-train-extra``; never the cs224n
files, which are v1.1 dev paragraphs) with its answerable questions.  PRAG augments a passage with an LLM-written
rewrite and LLM-written QA pairs; with a 135M model and a CPU budget we keep the cheap part of
that recipe and use SQuAD's own questions instead of generated ones:

* ``passage``  - LM loss on the passage text itself (its own completion at every prefix);
* ``closed``   - each QA pair in the serving chat prompt *without* the passage, loss on the
  answer (this is what DyPRAG mode must recall from the delta);
* ``context``  - a QA pair in the serving prompt *with* the passage in context, loss on the
  answer (this is what DyPRAG-Combine uses).

Prompts are rendered by :func:`hyco_rag.prompts.build_prompt`, the same builder serving uses,
so the deltas are trained on exactly the format they are applied to.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from hyco_rag.prompts import build_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
#: SQuAD v1.1 TRAIN (relative to ../shared/data): 18,896 paragraphs, none shared with v1.1 dev.
#: The cs224n v2.0 files are v1.1 dev paragraphs and must never be trained on.
SQUAD_V11_TRAIN = "squad-train-extra/train-v1.1-explorer.json"
SEQUENCE_KINDS = ("passage", "closed", "context")


@dataclass(frozen=True)
class TrainingPassage:
    """A passage and its (question, answers) pairs."""

    id: str
    text: str
    qa: tuple[tuple[str, tuple[str, ...]], ...]
    title: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "text": self.text, "title": self.title, "qa": [[q, list(a)] for q, a in self.qa]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrainingPassage:
        return cls(
            id=str(data["id"]),
            text=str(data["text"]),
            title=str(data.get("title", "")),
            qa=tuple((str(q), tuple(str(x) for x in a)) for q, a in cast("list[Any]", data["qa"])),
        )


def load_training_passages(
    paths: Sequence[str] | str | None = None,
    *,
    limit: int | None = None,
    offset: int = 0,
    min_questions: int = 2,
    max_questions: int = 6,
    max_chars: int = 1200,
    seed: int = 0,
) -> list[TrainingPassage]:
    """SQuAD training paragraphs with at least ``min_questions`` answerable questions.

    Paragraphs are shuffled (seeded) across both files so a prefix covers many articles;
    ``offset``/``limit`` then select disjoint slices (e.g. for held-out validation).  Very long
    paragraphs (``> max_chars``) are skipped: they dominate the CPU cost of a step.
    """
    from hyco_rag.data import squad_paragraphs

    paths = (paths,) if isinstance(paths, str) else tuple(paths or (SQUAD_V11_TRAIN,))
    for path in paths:
        if "cs224n" in str(path) or "dev-v1.1" in str(path):
            raise ValueError(f"{path} holds SQuAD v1.1 dev paragraphs (the evaluation set); train on {SQUAD_V11_TRAIN}")
    passages: list[TrainingPassage] = []
    for path in paths:
        for paragraph in squad_paragraphs(path):
            qa = tuple((q, tuple(dict.fromkeys(a))) for q, a in paragraph.questions if a)
            if len(qa) < min_questions or len(paragraph.context) > max_chars:
                continue
            passages.append(
                TrainingPassage(
                    id=f"{path.rsplit('/', 1)[-1]}:{paragraph.id}",
                    text=paragraph.context,
                    qa=qa[:max_questions],
                    title=paragraph.title,
                )
            )
    random.Random(seed).shuffle(passages)
    passages = passages[offset:]
    return passages[:limit] if limit is not None else passages


@dataclass
class TrainingSequence:
    """One tokenized training sequence; ``labels`` is ``IGNORE`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    kind: str
    passage: int = 0  # index of the passage (its delta slot) in the current group

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SequenceBuilder:
    """Renders the three sequence kinds with the serving prompt format."""

    tokenizer: PreTrainedTokenizerBase
    max_passage_tokens: int = 256
    max_length: int = 512
    _cache: dict[str, list[int]] = field(default_factory=dict)

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 50_000:
                self._cache[text] = ids
        return ids

    def passage_lm(self, passage: TrainingPassage, index: int = 0) -> TrainingSequence:
        ids = self._ids(passage.text)[: self.max_passage_tokens]
        return TrainingSequence(ids, list(ids), "passage", index)

    def qa(self, question: str, answer: str, documents: Sequence[str] = (), index: int = 0) -> TrainingSequence:
        prompt = self._ids(build_prompt(self.tokenizer, question, documents))
        end = self.tokenizer.eos_token or ""
        target = self._ids(answer.strip() + end)
        room = self.max_length - len(target)
        if room < 8:
            raise ValueError(f"answer {answer[:40]!r} leaves no room in max_length={self.max_length}")
        prompt = prompt[-room:]  # keep the question end of an over-long prompt
        return TrainingSequence(prompt + target, [IGNORE] * len(prompt) + target, "context" if documents else "closed", index)

    def sequences(
        self,
        passage: TrainingPassage,
        index: int = 0,
        *,
        kinds: Iterable[str] = SEQUENCE_KINDS,
        max_closed: int | None = None,
        max_context: int | None = 1,
        rng: random.Random | None = None,
    ) -> list[TrainingSequence]:
        """The chosen kinds of sequences for one passage (first answer of each question)."""
        kinds = set(kinds)
        unknown = kinds - set(SEQUENCE_KINDS)
        if unknown:
            raise ValueError(f"unknown sequence kinds {sorted(unknown)}; expected {SEQUENCE_KINDS}")
        qa = list(passage.qa)
        out: list[TrainingSequence] = []
        if "passage" in kinds:
            out.append(self.passage_lm(passage, index))
        if "closed" in kinds:
            for question, answers in qa[:max_closed]:
                out.append(self.qa(question, answers[0], (), index))
        if "context" in kinds:
            chosen = list(qa)
            if rng is not None:
                rng.shuffle(chosen)
            for question, answers in chosen[:max_context]:
                out.append(self.qa(question, answers[0], (passage.text,), index))
        return out


def pack_batches(sequences: Sequence[TrainingSequence], max_tokens: int) -> list[list[TrainingSequence]]:
    """Group sequences of similar length into padded batches of at most ``max_tokens`` cells."""
    ordered = sorted(sequences, key=len, reverse=True)
    batches: list[list[TrainingSequence]] = []
    current: list[TrainingSequence] = []
    for seq in ordered:
        width = max([len(seq)] + [len(s) for s in current])
        if current and width * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(seq)
    if current:
        batches.append(current)
    return batches


def collate(batch: Sequence[TrainingSequence], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels``, each row's ``slots`` (tensors)
    and ``kinds`` (list of str)."""
    width = max(len(s) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, seq in enumerate(batch):
        n = len(seq)
        input_ids[row, :n] = torch.tensor(seq.input_ids)
        labels[row, :n] = torch.tensor(seq.labels)
        mask[row, :n] = 1
    slots = torch.tensor([s.passage for s in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "slots": slots, "kinds": [s.kind for s in batch]}
