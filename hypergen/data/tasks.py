"""Task suites in BIG-bench's JSON format, shared by training and evaluation.

A suite is a folder of `<task>/task.json` files, optionally with subtasks in
`<task>/<subtask>/task.json` (named "task/subtask"). `training/prepare_data.py` fills one from
the bigbench sdist; the tests use small hand-written files in the same format.

Prompt format (zero-shot, no few-shot examples), following BIG-bench's own defaults:

    prompt     = (task_prefix + input_prefix + input [+ choices] + output_prefix)
                 with leading whitespace and trailing spaces stripped
    completion = " " + target

`input_prefix` is the file's `example_input_prefix` (default "\\nQ: ") and `output_prefix` its
`example_output_prefix` (default "\\nA: "), so a plain file gives "Q: {input}\\nA:" and one with a
task prefix gives "{task_prefix}\\nQ: {input}\\nA:". Answer options are appended to the input
(with the file's `choice_prefix`, default "\\n  choice: ") only where the file sets
`append_choices_to_input` to true; BIG-bench's default is to append, ours is not to, because
options are scored by log-likelihood and the listing only lengthens the prompt.

Multiple-choice options are sorted by text so their position carries no label information.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

MULTIPLE_CHOICE = "multiple_choice"
GENERATIVE = "generative"
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "


@dataclass(frozen=True)
class Example:
    """One task example, ready for the LM.

    Attributes:
        input: The raw input text from the file.
        prompt: The formatted prompt fed to the LM (see the module docstring); it never ends with
            a space.
        completion: The training target, starting with a space: the first reference for
            generative tasks, the (first) correct option for multiple choice.
        options: Multiple-choice options, each with a leading space, sorted; empty if generative.
        correct: Indices into `options` of those with the highest target score.
        references: Every acceptable target (generative), stripped of surrounding whitespace.
    """

    input: str
    prompt: str
    completion: str
    options: tuple[str, ...] = ()
    correct: tuple[int, ...] = ()
    references: tuple[str, ...] = ()


@dataclass
class Task:
    """A task file: its metadata and usable examples.

    Attributes:
        name: "date_understanding", or "task/subtask" for a subtask.
        description: The file's own natural-language description.
        keywords: The file's keywords.
        kind: "multiple_choice" or "generative".
        metrics: The file's metrics (e.g. "multiple_choice_grade", "exact_str_match").
        examples: The usable examples, in file order.
        task_prefix: The file's task prefix ("" if none), already included in each prompt.
    """

    name: str
    description: str
    keywords: tuple[str, ...]
    kind: str
    metrics: tuple[str, ...]
    examples: list[Example]
    task_prefix: str = ""


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _parse_example(
    raw: Any, index: int, path: Path, fmt: dict[str, Any], kind: str
) -> Example | None:
    """Turn one JSON example into an Example, or None if it has no usable input or target."""
    if not isinstance(raw, dict) or not isinstance(raw.get("input"), str):
        raise _fail(path, f"example {index} needs a string 'input'")
    if ("target_scores" in raw) != (kind == MULTIPLE_CHOICE):
        raise _fail(path, f"example {index}: mixes multiple-choice and generative examples")
    text = raw["input"]
    if not text.strip():
        return None

    options: tuple[str, ...] = ()
    correct: tuple[int, ...] = ()
    references: tuple[str, ...] = ()
    if kind == MULTIPLE_CHOICE:
        scores = raw["target_scores"]
        if not isinstance(scores, dict) or not all(
            isinstance(v, (int, float)) for v in scores.values()
        ):
            raise _fail(path, f"example {index}: 'target_scores' must map options to numbers")
        best: dict[str, float] = {}
        for option, score in scores.items():
            key = " " + str(option).strip()
            best[key] = max(score, best.get(key, score))
        if len(best) < 2 or max(best.values()) <= min(best.values()):
            return None  # nothing to choose between
        options = tuple(sorted(best))
        top = max(best.values())
        correct = tuple(i for i, o in enumerate(options) if best[o] == top)
        completion = options[correct[0]]
    else:
        target = raw.get("target")
        targets = [target] if isinstance(target, str) else target
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise _fail(path, f"example {index} needs 'target_scores' or a string/list 'target'")
        references = tuple(t.strip() for t in targets if t.strip())
        if not references:
            return None
        completion = " " + references[0]

    if options and fmt["append_choices"]:
        text_with_choices = text + "".join(fmt["choice_prefix"] + o.strip() for o in options)
    else:
        text_with_choices = text
    prompt = fmt["task_prefix"] + fmt["input_prefix"] + text_with_choices + fmt["output_prefix"]
    return Example(
        input=text,
        prompt=prompt.lstrip().rstrip(" \t"),
        completion=completion,
        options=options,
        correct=correct,
        references=references,
    )


def load_task_file(
    path: str | Path, name: str | None = None, max_prompt_chars: int | None = None
) -> Task:
    """Read one BIG-bench task.json.

    Examples with an empty input, no non-empty target, or target scores that are all equal are
    skipped, as are examples whose prompt is longer than `max_prompt_chars`.

    Args:
        path: The task.json file.
        name: The task's name; defaults to the file's "name" field, else its folder's name.
        max_prompt_chars: If set, drop examples whose prompt is longer than this.

    Returns:
        The Task (its `examples` may be empty).

    Raises:
        ValueError: Naming the file, if it is not valid JSON or lacks required fields.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise _fail(path, f"invalid JSON: {err}") from err
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object")
    if not isinstance(data.get("description"), str):
        raise _fail(path, "missing string field 'description'")
    raw_examples = data.get("examples")
    if not isinstance(raw_examples, list):
        raise _fail(path, "missing list field 'examples'")

    kind = GENERATIVE
    if raw_examples and isinstance(raw_examples[0], dict) and "target_scores" in raw_examples[0]:
        kind = MULTIPLE_CHOICE
    append = data.get("append_choices_to_input", False)
    fmt = {
        "task_prefix": str(data.get("task_prefix", "")),
        "input_prefix": str(data.get("example_input_prefix", DEFAULT_INPUT_PREFIX)),
        "output_prefix": str(data.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX)),
        "choice_prefix": str(data.get("choice_prefix", DEFAULT_CHOICE_PREFIX)),
        "append_choices": append is True or str(append).lower() == "true",
    }
    examples = [_parse_example(raw, i, path, fmt, kind) for i, raw in enumerate(raw_examples)]
    usable = [ex for ex in examples if ex is not None]
    if max_prompt_chars is not None:
        usable = [ex for ex in usable if len(ex.prompt) <= max_prompt_chars]
    if len(usable) < len(raw_examples):
        logger.debug("%s: kept %d of %d examples", path, len(usable), len(raw_examples))

    return Task(
        name=name or str(data.get("name") or path.parent.name),
        description=data["description"].strip(),
        keywords=tuple(str(k) for k in data.get("keywords", ())),
        kind=kind,
        metrics=tuple(str(m) for m in data.get("metrics", ())),
        examples=usable,
        task_prefix=fmt["task_prefix"],
    )


def _is_subtask_index(path: Path) -> bool:
    """True for a parent task.json that only describes its subtasks (no 'examples')."""
    has_subtasks = any(p.is_file() for p in path.parent.glob("*/task.json"))
    if not has_subtasks:
        return False
    with open(path, encoding="utf-8") as f:
        try:
            return "examples" not in json.load(f)
        except json.JSONDecodeError:
            return False


def load_suite(
    folder: str | Path,
    names: Iterable[str] | None = None,
    max_prompt_chars: int | None = None,
) -> dict[str, Task]:
    """Load every task.json under `folder` (recursively).

    Tasks are named by their folder relative to `folder` ("navigate", "arithmetic/1_digit_addition").
    A parent task.json that only indexes its subtasks is skipped quietly; a task with no usable
    examples is skipped with a warning.

    Args:
        folder: The suite's root folder.
        names: If given, load only these tasks; a parent's name selects all its subtasks.
        max_prompt_chars: If set, drop examples whose prompt is longer than this.

    Returns:
        Tasks by name, sorted by name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"task suite folder {folder} does not exist")
    wanted = set(names) if names is not None else None
    tasks: dict[str, Task] = {}
    for path in sorted(folder.rglob("task.json")):
        rel = path.parent.relative_to(folder).as_posix()
        name = folder.name if rel == "." else rel
        if wanted is not None and name not in wanted and name.split("/")[0] not in wanted:
            continue
        if _is_subtask_index(path):
            logger.debug("skipping subtask index %s", path)
            continue
        task = load_task_file(path, name=name, max_prompt_chars=max_prompt_chars)
        if not task.examples:
            logger.warning("skipping task %s: no usable examples in %s", name, path)
            continue
        tasks[name] = task
    if wanted is not None:
        missing = sorted(
            n for n in wanted if not any(t == n or t.startswith(n + "/") for t in tasks)
        )
        if missing:
            logger.warning("tasks not found (or empty) in %s: %s", folder, ", ".join(missing))
    return tasks


def named_by(name: str, names: Iterable[str]) -> bool:
    """Whether a split list names task ``name``: itself, or its parent task, which covers its
    subtasks (``arithmetic/1_digit_addition`` is named by ``arithmetic``)."""
    return name in names or name.split("/")[0] in names


def split_examples(
    task: Task, test_fraction: float, seed: int, max_test: int | None = None
) -> tuple[list[Example], list[Example]]:
    """Split a task's examples into (train, test), deterministically.

    Examples are grouped by input text so duplicates never straddle the split; groups are
    shuffled with a generator seeded by (seed, task name), and the first groups make up
    `round(test_fraction * n)` test examples (at least one when `test_fraction > 0`, at most
    `max_test`). Both parts keep file order.

    Args:
        task: The task to split.
        test_fraction: Fraction of examples for the test part, in [0, 1].
        seed: The split's seed.
        max_test: Cap on the number of test examples.

    Returns:
        (train, test) lists of examples.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if max_test is not None and max_test < 0:
        raise ValueError(f"max_test must be >= 0, got {max_test}")
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(task.examples):
        groups.setdefault(ex.input, []).append(i)
    order = list(groups.values())
    random.Random(f"{seed}:{task.name}").shuffle(order)

    n_test = round(test_fraction * len(task.examples))
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if max_test is not None:
        n_test = min(n_test, max_test)
    test_ids: set[int] = set()
    for group in order:
        if len(test_ids) >= n_test:
            break
        if len(test_ids) + len(group) <= n_test:  # skip groups that would overshoot
            test_ids.update(group)
    train = [ex for i, ex in enumerate(task.examples) if i not in test_ids]
    test = [ex for i, ex in enumerate(task.examples) if i in test_ids]
    return train, test


@dataclass
class TaskSplit:
    """A committed train/held-out split of a suite (see `evaluation/splits/bigbench.yaml`).

    Attributes:
        train_tasks: Tasks the hypernetwork trains on.
        heldout_tasks: Tasks kept out of training, for evaluation.
        validation_tasks: Further tasks kept out of training, for choosing between checkpoints
            and recipes, so that the held-out tasks stay a test that nothing was picked on.
        seed: Seed for the per-task example splits.
        test_fraction: Fraction of each task's examples in its test part.
        max_test: Cap on each task's test examples.
        max_prompt_chars: Examples with longer prompts are dropped when loading.
    """

    train_tasks: list[str]
    heldout_tasks: list[str]
    validation_tasks: list[str] = dataclasses.field(default_factory=list)
    seed: int = 0
    test_fraction: float = 0.2
    max_test: int | None = None
    max_prompt_chars: int | None = None

    def __post_init__(self) -> None:
        if not self.train_tasks or not self.heldout_tasks:
            raise ValueError("train_tasks and heldout_tasks must both be non-empty")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        heldout_roots = {n.split("/")[0] for n in self.heldout_tasks}
        leaked = [n for n in self.train_tasks if n.split("/")[0] in heldout_roots]
        if leaked:
            raise ValueError(f"train_tasks overlap heldout_tasks: {', '.join(leaked)}")
        # Validation tasks may share a family with training tasks (unseen subtasks), never with
        # the held-out tasks, and never be (or sit under) a task that is trained on.
        train = set(self.train_tasks)
        clash = [
            n
            for n in self.validation_tasks
            if n.split("/")[0] in heldout_roots
            or named_by(n, train)
            or any(t.startswith(n + "/") for t in train)
        ]
        if clash:
            raise ValueError(
                f"validation_tasks overlap train_tasks or heldout_tasks: {', '.join(clash)}"
            )

    def load(self, folder: str | Path) -> dict[str, Task]:
        """Load the split's train and held-out tasks from a suite folder.

        Args:
            folder: The suite's root folder (e.g. the prepare_data cache).
        """
        return load_suite(folder, [*self.train_tasks, *self.heldout_tasks], self.max_prompt_chars)

    def examples(self, task: Task) -> tuple[list[Example], list[Example]]:
        """The (train, test) examples of `task` under this split.

        Args:
            task: A task loaded from the suite.
        """
        if self.max_prompt_chars is not None:
            kept = [ex for ex in task.examples if len(ex.prompt) <= self.max_prompt_chars]
            task = dataclasses.replace(task, examples=kept)
        return split_examples(task, self.test_fraction, self.seed, self.max_test)


def load_split(path: str | Path) -> TaskSplit:
    """Read a committed split YAML.

    Args:
        path: The YAML file, with keys `train_tasks`, `heldout_tasks`, `seed`, `test_fraction`
            and optionally `validation_tasks`, `max_test` and `max_prompt_chars`.

    Raises:
        ValueError: Naming the file, if it is malformed, has unknown keys, or the task lists
            overlap.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise _fail(path, "expected a YAML mapping")
    known = {f.name for f in dataclasses.fields(TaskSplit)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    missing = [k for k in ("train_tasks", "heldout_tasks") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path}: missing list field(s) {', '.join(missing)}")
    try:
        return TaskSplit(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
