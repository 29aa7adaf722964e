"""Synthetic fact documents and demonstration sets: the training data of document- and
demonstration-conditioned hypernetworks, in the ``TaskData`` form ``meta_train.py`` samples from.

    python training/documents.py --documents 3        # print the first documents and questions

Documents (``condition: document``): the corpus of ``hypergen.data.fact_documents``. A document is
a "task" named ``doc/<index>``: its condition row is the document, its examples the questions
(prompt ``Q: <question>\nA:``, completion `` <answer>``); the last ``heldout`` documents are held
out.

Demonstrations (``condition: demonstrations``). The condition of a task is ``k`` of its training
examples; ``with_demonstrations`` splits each task's training examples into a demonstration pool
(the first part) and prediction targets (the rest), so a sample's condition never contains the
example being predicted. Held-out tasks draw their demonstrations from their own training part
and are scored on their test part.
"""

from __future__ import annotations

import argparse
import random

from hypergen.data.fact_documents import fact_corpus, fact_documents
from hypergen.data.tasks import Example
from training.data import TaskData


def document_task_data(
    documents: int, heldout: int, seed: int = 0, test_questions: int = 4
) -> TaskData:
    """The corpus (``hypergen.data.fact_documents.FactCorpus``) as ``TaskData``: one task per
    document, its condition row the document text."""
    corpus = fact_corpus(documents, heldout, seed, test_questions)
    data = TaskData(corpus.train_names, corpus.heldout_names, {}, {}, [], {}, {}, {})
    for name, document in zip(corpus.names, corpus.documents):
        data.train_examples[name], data.test_examples[name] = corpus.split(name)
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
