"""Training data shared by the recipes: the task split, description phrasings, and deterministic
mixed-task batches.

A sample is (task, one of the task's description phrasings, one of its training examples). The
global batch of step ``s`` is drawn by a generator seeded with ``(seed, s)`` alone: every process
builds the same global batch and takes its own slice (``shard``), so a run gives the same batches
on 1 or N processes and after a resume, with no sampler state to save.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hypergen.data.descriptions import TRAIN, describe
from hypergen.data.tasks import Example, Task, load_split, named_by

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One training or evaluation item.

    Attributes:
        task: task name.
        condition: row of the description phrasing in the condition table (-1: none).
        prompt: prompt text fed to the LM.
        completion: completion text the loss is on.
        fmt: text format shown to the LM (``training/formats.py``).
    """

    task: str
    condition: int
    prompt: str
    completion: str
    fmt: str = "plain"


@dataclass
class TaskData:
    """The split's tasks with their example parts and description phrasings.

    Attributes:
        train_tasks: names of the loaded training tasks (subtasks expanded), sorted.
        heldout_tasks: names of the loaded held-out tasks, sorted.
        train_examples: task -> examples to train on (the split's train part).
        test_examples: task -> the split's test part.
        phrasings: all description texts, one row each of the condition table.
        train_phrasings: task -> rows of its phrasings from "train" templates.
        unseen_phrasings: task -> rows of its phrasings from "unseen" templates (may be empty).
        eval_phrasing: task -> row of its plain description (the task file's own text).
        phrasing_tasks: the task of each row of ``phrasings`` (a condition can depend on the
            task beyond its description, e.g. its language).
    """

    train_tasks: list[str]
    heldout_tasks: list[str]
    train_examples: dict[str, list[Example]]
    test_examples: dict[str, list[Example]]
    phrasings: list[str]
    train_phrasings: dict[str, list[int]]
    unseen_phrasings: dict[str, list[int]]
    eval_phrasing: dict[str, int]
    phrasing_tasks: list[str] = field(default_factory=list)


def load_task_data(
    split_path: str | Path, suite_dir: str | Path, max_train_tasks: int = 0
) -> TaskData:
    """Load the split's tasks from ``suite_dir`` and phrase their descriptions.

    Args:
        split_path: committed split YAML (``hypergen.data.tasks.load_split``).
        suite_dir: BIG-bench-format suite folder.
        max_train_tasks: keep only the first N training tasks by name (0: all).
    """
    split = load_split(split_path)
    tasks: dict[str, Task] = split.load(suite_dir)
    train = sorted(n for n in tasks if named_by(n, split.train_tasks))
    heldout = sorted(n for n in tasks if named_by(n, split.heldout_tasks))
    if max_train_tasks:
        train = train[:max_train_tasks]
    if not train or not heldout:
        raise ValueError(f"{split_path}: no training or no held-out tasks found in {suite_dir}")
    data = TaskData(train, heldout, {}, {}, [], {}, {}, {})
    for name in train + heldout:
        data.train_examples[name], data.test_examples[name] = split.examples(tasks[name])
        rows = {}
        for d in describe(tasks[name]):
            rows[d.template] = len(data.phrasings)
            data.phrasings.append(d.text)
            data.phrasing_tasks.append(name)
            kind = data.train_phrasings if d.split == TRAIN else data.unseen_phrasings
            kind.setdefault(name, []).append(rows[d.template])
        if not rows:
            raise ValueError(f"task {name} has no description to condition on")
        data.train_phrasings.setdefault(name, list(rows.values()))
        data.eval_phrasing[name] = rows.get("plain", next(iter(rows.values())))
    empty = [n for n in train if not data.train_examples[n]]
    if empty:
        logger.warning("training tasks without training examples (skipped): %s", empty)
        data.train_tasks = [n for n in train if data.train_examples[n]]
    return data


class MixtureSampler:
    """Global batches mixing tasks: task uniformly, then an example and a phrasing of it.

    Args:
        examples: task -> examples to draw from.
        phrasings: task -> condition rows to draw from (None: samples carry condition -1).
        seed: with the step, the only input of each batch's generator.
        formats: text formats to draw from (one format draws nothing: batches stay as before).
        chat_examples: task -> examples a ``chat`` sample of that task is drawn from instead
            (the base model's own correct replies: ``training/chat_replies.py``).
    """

    def __init__(
        self,
        examples: dict[str, list[Example]],
        phrasings: dict[str, list[int]] | None = None,
        seed: int = 0,
        formats: Sequence[str] = ("plain",),
        chat_examples: dict[str, list[Example]] | None = None,
    ):
        self.tasks = sorted(t for t in examples if examples[t])
        if not self.tasks:
            raise ValueError("MixtureSampler needs at least one task with examples")
        self.examples, self.phrasings, self.seed = examples, phrasings, seed
        self.formats = list(formats)
        self.chat_examples = chat_examples or {}

    def batch(self, step: int, size: int) -> list[Sample]:
        """The global batch of ``step``: ``size`` samples, a function of ``(seed, step)`` only."""
        rng = random.Random(f"{self.seed}:{step}")
        samples = []
        for _ in range(size):
            task = rng.choice(self.tasks)
            example = rng.choice(self.examples[task])
            condition = rng.choice(self.phrasings[task]) if self.phrasings else -1
            fmt = rng.choice(self.formats) if len(self.formats) > 1 else self.formats[0]
            if fmt == "chat" and self.chat_examples.get(task):
                example = rng.choice(self.chat_examples[task])
            samples.append(Sample(task, condition, example.prompt, example.completion, fmt))
        return samples


def shard(
    samples: Sequence, micro_steps: int, num_processes: int, process_index: int
) -> list[list]:
    """Split a global batch into ``micro_steps`` micro-batches and take this process's slice of each.

    The global batch is cut into ``micro_steps * num_processes`` equal, contiguous pieces; piece
    ``m * num_processes + process_index`` is this process's micro-batch ``m``.
    """
    pieces = micro_steps * num_processes
    if len(samples) % pieces:
        raise ValueError(
            f"batch of {len(samples)} does not split into {micro_steps} micro-steps x {num_processes} processes"
        )
    size = len(samples) // pieces
    return [
        list(
            samples[
                (m * num_processes + process_index) * size : (m * num_processes + process_index + 1)
                * size
            ]
        )
        for m in range(micro_steps)
    ]


def conditions_for(samples: Sequence[Sample], table: Tensor) -> Tensor:
    """(b, condition_dim) rows of the precomputed condition table for ``samples``."""
    return table[torch.tensor([s.condition for s in samples], device=table.device)]
