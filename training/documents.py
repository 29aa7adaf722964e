"""Synthetic fact documents and demonstration sets: the training data of document- and
demonstration-conditioned hypernetworks, in the ``TaskData`` form ``meta_train.py`` samples from.

    python training/documents.py --documents 3        # print the first documents and questions

Documents (``condition: document``). Each document describes one fictional person, their home
city and their employer in three short paragraphs; every name is made of random syllables, so the
base model cannot know the facts and must read them (from its prompt, or from the adapter). Each
document has eight question/answer pairs about it. A document is a "task" named ``doc/<index>``:
its condition row is the document, its examples the questions (prompt ``Q: <question>\\nA:``,
completion `` <answer>``). The last ``heldout`` documents are held out; every name is drawn once
across the whole corpus, so no held-out fact appears in a training document. The corpus is a
function of ``(documents, seed)`` alone.

Demonstrations (``condition: demonstrations``). The condition of a task is ``k`` of its training
examples; ``with_demonstrations`` splits each task's training examples into a demonstration pool
(the first part) and prediction targets (the rest), so a sample's condition never contains the
example being predicted. Held-out tasks draw their demonstrations from their own training part
and are scored on their test part.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from hypergen.data.tasks import Example
from training.data import TaskData

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


def _example(question: str, answer: str) -> Example:
    return Example(question, f"Q: {question}\nA:", f" {answer}", references=(answer,))


def document_task_data(
    documents: int, heldout: int, seed: int = 0, test_questions: int = 4
) -> TaskData:
    """The corpus as ``TaskData``: one task per document, its condition row the document text.

    Training documents train on all their questions; held-out documents are scored on their
    last ``test_questions`` (their first ones are their ``train_examples``, for baselines that
    train per document; meta-training never samples held-out documents).
    """
    if not 0 < heldout < documents:
        raise ValueError(f"heldout must be in [1, documents), got {heldout} of {documents}")
    corpus = fact_documents(documents, seed)
    names = [f"doc/{i:05d}" for i in range(documents)]
    train, held = names[: documents - heldout], names[documents - heldout :]
    data = TaskData(train, held, {}, {}, [], {}, {}, {})
    for name, document in zip(names, corpus):
        examples = [_example(q, a) for q, a in document.questions]
        if name in held:
            cut = len(examples) - test_questions
            data.train_examples[name], data.test_examples[name] = examples[:cut], examples[cut:]
        else:
            data.train_examples[name], data.test_examples[name] = examples, []
        row = len(data.phrasings)
        data.phrasings.append(document.text)
        data.phrasing_tasks.append(name)
        data.train_phrasings[name] = [row]
        data.eval_phrasing[name] = row
    return data


def demonstrations_of(examples: list[Example]) -> list[dict[str, str]]:
    """Examples as an ``examples`` condition (``hypergen.conditions.demonstrations``)."""
    return [{"input": e.input, "output": e.completion.strip()} for e in examples]


def with_demonstrations(data: TaskData, k: int, sets: int, seed: int = 0) -> TaskData:
    """``data`` with each task's condition rows replaced by ``sets`` draws of ``k`` of its
    training examples (JSON-able demonstration lists in ``phrasings``).

    A training task's examples are split: the first ``max(k, n // 2)`` form its demonstration
    pool, the rest are what it trains on, so no sample is conditioned on itself. Tasks with fewer
    than ``k + 1`` training examples are dropped from training (logged by the caller's sizes);
    held-out tasks keep all their training examples as the pool and are scored on their test part.
    """
    if k < 1 or sets < 1:
        raise ValueError(f"demonstrations and demonstration_sets must be >= 1, got {k}, {sets}")
    out = TaskData([], [], {}, dict(data.test_examples), [], {}, {}, {})
    for name in data.train_tasks + data.heldout_tasks:
        examples = data.train_examples[name]
        held = name in data.heldout_tasks
        pool_size = len(examples) if held else max(k, len(examples) // 2)
        pool, targets = examples[:pool_size], examples[pool_size:]
        if len(pool) < k or (not held and not targets):
            continue
        rng = random.Random(f"demonstrations:{seed}:{name}")
        rows = []
        for _ in range(sets):
            rows.append(len(out.phrasings))
            out.phrasings.append(demonstrations_of(rng.sample(pool, k)))
            out.phrasing_tasks.append(name)
        (out.heldout_tasks if held else out.train_tasks).append(name)
        out.train_examples[name] = pool if held else targets
        out.train_phrasings[name], out.eval_phrasing[name] = rows, rows[0]
    if not out.train_tasks or not out.heldout_tasks:
        raise ValueError(f"no training or no held-out task has {k} demonstrations to draw")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--documents", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for document in fact_documents(args.documents, args.seed):
        print(document.text, "", *(f"Q: {q}  A: {a}" for q, a in document.questions), sep="\n")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
