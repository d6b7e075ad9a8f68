"""Synthetic-fact probe: made-up entity cards the reader cannot know, templated questions.

Each card describes one invented person (a generated name) with four attributes drawn
uniformly from fixed pools: occupation, home town (invented names), instrument, pet.  A reader
without the card is at chance *by construction*: every attribute value is equally likely.

* **training cards** (``split="train"``) and **evaluation cards** (``split="eval"``) come from
  disjoint seeds, their names are checked disjoint, and the home towns of evaluation cards come
  from a pool no training card uses (so "copy the town" cannot be memorised from training).
* the evaluation questions use *other wordings* than the training questions.
* scoring: multiple choice by the mean per-token log-likelihood of each candidate answer among
  all values of the attribute's pool (>= 12 candidates), plus the greedy answer, scored as
  answer-contained.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

OCCUPATIONS = (
    "glassblower",
    "beekeeper",
    "cartographer",
    "blacksmith",
    "astronomer",
    "carpenter",
    "pharmacist",
    "lighthouse keeper",
    "violin maker",
    "tailor",
    "surveyor",
    "bookbinder",
    "chemist",
    "potter",
    "shipwright",
    "locksmith",
)
INSTRUMENTS = (
    "oboe",
    "harp",
    "cello",
    "trumpet",
    "banjo",
    "accordion",
    "flute",
    "bagpipes",
    "clarinet",
    "xylophone",
    "tuba",
    "mandolin",
    "harmonica",
    "bassoon",
)
PETS = (
    "heron",
    "tortoise",
    "ferret",
    "parrot",
    "goat",
    "hedgehog",
    "owl",
    "iguana",
    "rabbit",
    "raven",
    "donkey",
    "goldfish",
    "peacock",
    "llama",
)
#: Invented towns: the first half only ever appears in training cards, the second only in evaluation.
TOWNS_TRAIN = (
    "Velmora",
    "Quenby",
    "Tarsk",
    "Orvell",
    "Brindlemoor",
    "Kessaly",
    "Dunmarrow",
    "Pellith",
    "Ashcombe Vale",
    "Yrrow",
    "Calderin",
    "Moskett",
    "Thornvale",
    "Ebberly",
)
TOWNS_EVAL = (
    "Zarnith",
    "Holmsk",
    "Vintaro",
    "Greyspire",
    "Luthmere",
    "Oskarrow",
    "Fennigate",
    "Brusk",
    "Ildavar",
    "Corvelle",
    "Wexmoor",
    "Talvinne",
    "Rudmark",
    "Saffron Hollow",
)

_ONSETS = (
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "j",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "th",
    "tr",
    "v",
    "w",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "v")

CARD_TEMPLATES = (
    "{name} works as a {occupation} in the town of {town}. In the evenings {first} plays the "
    "{instrument}, and at home {first} keeps a pet {pet}.",
    "{name} is a {occupation} from {town}. {first} has played the {instrument} since childhood and lives with a pet {pet}.",
    "Born and raised in {town}, {name} earns a living as a {occupation}. {first}'s favourite "
    "instrument is the {instrument}, and {first}'s pet is a {pet}.",
)

#: attribute -> (training wordings, evaluation wordings)
QUESTIONS = {
    "occupation": (
        ("What is {name}'s job?", "What does {name} work as?"),
        ("What does {name} do for a living?", "What is the profession of {name}?"),
    ),
    "town": (
        ("Which town is {name} from?", "In which town does {name} live?"),
        ("Where does {name} come from?", "What is the home town of {name}?"),
    ),
    "instrument": (
        ("What instrument does {name} play?", "Which instrument is {name}'s favourite?"),
        ("Which musical instrument does {name} play?", "What does {name} play in the evenings?"),
    ),
    "pet": (
        ("What pet does {name} keep?", "What animal lives with {name}?"),
        ("Which animal does {name} keep as a pet?", "What kind of pet does {name} have?"),
    ),
}
ATTRIBUTES = tuple(QUESTIONS)


def candidate_pool(attribute: str, split: str) -> tuple[str, ...]:
    """All values an attribute can take for cards of ``split`` (the multiple-choice candidates)."""
    if attribute == "town":
        return TOWNS_TRAIN if split == "train" else TOWNS_EVAL
    return {"occupation": OCCUPATIONS, "instrument": INSTRUMENTS, "pet": PETS}[attribute]


@dataclass(frozen=True)
class Card:
    """One invented entity and its attributes."""

    id: str
    name: str
    attributes: dict[str, str]
    text: str
    split: str

    def question(self, attribute: str, wording: int = 0) -> str:
        forms = QUESTIONS[attribute][0 if self.split == "train" else 1]
        return forms[wording % len(forms)].format(name=self.name)

    def qa(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Every (question, answers) of the card in its split's wordings."""
        return tuple(
            (self.question(attribute, w), (self.attributes[attribute],))
            for attribute in ATTRIBUTES
            for w in range(len(QUESTIONS[attribute][0]))
        )


def _word(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return word.capitalize()


def make_name(rng: random.Random) -> str:
    return f"{_word(rng, rng.choice((2, 2, 3)))} {_word(rng, rng.choice((2, 3)))}"


def make_cards(count: int, split: str, seed: int = 0) -> list[Card]:
    """``count`` cards of ``split`` ("train" or "eval"), deterministic in ``seed``.

    The two splits use different seed streams and the evaluation split drops any name that the
    same-seed training generator of up to 10,000 cards could produce, so no evaluation entity
    is ever a training entity.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"hyco-cards-{split}-{seed}")
    banned: set[str] = set()
    if split == "eval":
        train_rng = random.Random(f"hyco-cards-train-{seed}")
        banned = {make_name(train_rng) for _ in range(10_000)}
    cards: list[Card] = []
    seen: set[str] = set()
    while len(cards) < count:
        name = make_name(rng)
        if name in seen or name in banned:
            continue
        seen.add(name)
        attributes = {
            "occupation": rng.choice(OCCUPATIONS),
            "town": rng.choice(candidate_pool("town", split)),
            "instrument": rng.choice(INSTRUMENTS),
            "pet": rng.choice(PETS),
        }
        template = rng.choice(CARD_TEMPLATES)
        text = template.format(name=name, first=name.split()[0], **attributes)
        cards.append(Card(f"card-{split}-{seed}-{len(cards)}", name, attributes, text, split))
    return cards


@dataclass(frozen=True)
class ProbeQuestion:
    """One evaluation question about one card, with its multiple-choice candidates."""

    card: Card
    attribute: str
    question: str
    answer: str
    candidates: tuple[str, ...]

    @property
    def gold_index(self) -> int:
        return self.candidates.index(self.answer)


def probe_questions(cards: Sequence[Card], seed: int = 0) -> list[ProbeQuestion]:
    """One question per card, the attribute cycling over the four (so each gets a quarter)."""
    rng = random.Random(seed)
    out = []
    for i, card in enumerate(cards):
        attribute = ATTRIBUTES[i % len(ATTRIBUTES)]
        question = card.question(attribute, rng.randrange(2))
        out.append(ProbeQuestion(card, attribute, question, card.attributes[attribute], candidate_pool(attribute, card.split)))
    return out


def check_disjoint(train: Sequence[Card], evaluation: Sequence[Card]) -> None:
    """Raise ``ValueError`` if an evaluation card's name or text occurs among the training cards."""
    names = {c.name for c in train}
    texts = {c.text for c in train}
    clash = [c.name for c in evaluation if c.name in names or c.text in texts]
    if clash:
        raise ValueError(f"{len(clash)} evaluation cards also appear in training, e.g. {clash[:3]}")
