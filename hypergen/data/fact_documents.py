"""Synthetic fact documents: the corpus of document-conditioned meta-training
(``training/documents.py``) and its evaluation (``evaluation/documents.py``).

Each document describes one fictional person, their home town and their employer in three short
paragraphs; every name is made of random syllables, so the base model cannot know the facts and
must read them (from its prompt, or from the adapter). Each document has eight question/answer
pairs about it. Every name is drawn once across the whole corpus, so no held-out fact appears in
a training document. The corpus is a function of ``(documents, seed)`` alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypergen.data.tasks import Example

# 48 syllables: 2,304 two-syllable and 110,592 three-syllable names; a document draws one of
# the first kind (a first name) and five of the second, so 400 documents use a sixth of the
# two-syllable space (rejection sampling stays fast); ``_Names`` fails loudly if a corpus ever
# exhausts it.
SYLLABLES = [
    "ka",
    "ri",
    "to",
    "mel",
    "an",
    "sor",
    "vek",
    "li",
    "da",
    "nor",
    "bel",
    "tis",
    "ren",
    "ya",
    "gor",
    "pha",
    "lun",
    "ves",
    "ori",
    "tam",
    "sel",
    "quo",
    "ber",
    "din",
    "zar",
    "mo",
    "kel",
    "fen",
    "ish",
    "ul",
    "ta",
    "ro",
    "bri",
    "sam",
    "hel",
    "tor",
    "nim",
    "pra",
    "cas",
    "dul",
    "wen",
    "jor",
    "gal",
    "fi",
    "ek",
    "sun",
    "vo",
    "lak",
]
PROFESSIONS = [
    "glassblower",
    "beekeeper",
    "cartographer",
    "violinist",
    "pharmacist",
    "carpenter",
    "astronomer",
    "baker",
    "surveyor",
    "translator",
    "blacksmith",
    "librarian",
]
PRODUCTS = [
    "umbrellas",
    "bicycles",
    "lanterns",
    "clocks",
    "kites",
    "telescopes",
    "pianos",
    "boots",
    "maps",
    "soap",
]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
PETS = ["cat", "dog", "parrot", "tortoise", "rabbit", "goat"]


@dataclass(frozen=True)
class FactDocument:
    """One synthetic document and the question/answer pairs it answers."""

    name: str
    text: str
    questions: tuple[tuple[str, str], ...]


class _Names:
    """Random syllable names, each drawn at most once across a corpus."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def __call__(self, syllables: int) -> str:
        for _ in range(10_000):
            name = "".join(self.rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name
        raise ValueError(f"no unused {syllables}-syllable name left: the corpus is too large")


def fact_documents(documents: int, seed: int = 0) -> list[FactDocument]:
    """``documents`` synthetic documents, a function of ``(documents, seed)`` only."""
    rng = random.Random(f"fact-documents:{seed}")
    names = _Names(rng)
    corpus = []
    for _ in range(documents):
        person = f"{names(2)} {names(3)}"
        city, river, company = names(3), names(3), f"{names(3)} Works"
        born, founded = rng.randint(1940, 2000), rng.randint(1850, 1990)
        job, product = rng.choice(PROFESSIONS), rng.choice(PRODUCTS)
        color, pet, pet_name = rng.choice(COLORS), rng.choice(PETS), names(3)
        people = rng.randint(2, 90) * 1000
        text = (
            f"{person} was born in {born} in {city}. {person} works as a {job} at {company}. "
            f"Their favourite colour is {color}, and they keep a {pet} called {pet_name}.\n\n"
            f"{city} is a town of about {people} people on the river {river}. It is known for "
            f"its markets and its old stone bridge.\n\n"
            f"{company} was founded in {founded} and makes {product}. Most of its workshops are "
            f"in {city}."
        )
        questions = (
            (f"In which town was {person} born?", city),
            (f"In which year was {person} born?", str(born)),
            (f"What is {person}'s job?", job),
            (f"Which company does {person} work for?", company),
            (f"What is {person}'s favourite colour?", color),
            (f"What is the name of {person}'s {pet}?", pet_name),
            (f"Which river flows through {city}?", river),
            (f"What does {company} make?", product),
        )
        corpus.append(FactDocument(person, text, questions))
    return corpus


def question_examples(document: FactDocument) -> list[Example]:
    """The document's questions as examples: prompt ``Q: <question>\nA:``, completion `` <answer>``."""
    return [Example(q, f"Q: {q}\nA:", f" {a}", references=(a,)) for q, a in document.questions]


@dataclass(frozen=True)
class FactCorpus:
    """The corpus split for meta-training: documents ``doc/<index>``, the last ``heldout`` held out;
    a held-out document's last ``test_questions`` are its test questions, the rest its train part
    (for baselines that train per document; meta-training never samples held-out documents)."""

    documents: tuple[FactDocument, ...]
    heldout: int
    test_questions: int = 4

    def __post_init__(self):
        if not 0 < self.heldout < len(self.documents):
            raise ValueError(
                f"heldout must be in [1, documents), got {self.heldout} of {len(self.documents)}"
            )

    @property
    def names(self) -> list[str]:
        return [f"doc/{i:05d}" for i in range(len(self.documents))]

    @property
    def train_names(self) -> list[str]:
        return self.names[: len(self.documents) - self.heldout]

    @property
    def heldout_names(self) -> list[str]:
        return self.names[len(self.documents) - self.heldout :]

    def document(self, name: str) -> FactDocument:
        return self.documents[self.names.index(name)]

    def split(self, name: str) -> tuple[list[Example], list[Example]]:
        """(train, test) questions of a document: a training document trains on all of them."""
        examples = question_examples(self.document(name))
        if name in self.train_names:
            return examples, []
        cut = len(examples) - self.test_questions
        return examples[:cut], examples[cut:]


def fact_corpus(documents: int, heldout: int, seed: int = 0, test_questions: int = 4) -> FactCorpus:
    """``fact_documents(documents, seed)`` split as meta-training and its evaluation use it."""
    return FactCorpus(tuple(fact_documents(documents, seed)), heldout, test_questions)
