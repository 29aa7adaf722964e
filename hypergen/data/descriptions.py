"""Several phrasings of each task's description, for training and evaluating the hypernetwork.

Text-to-LoRA trains on many descriptions per task; BIG-bench gives one. `describe(task)` builds
up to 16 phrasings deterministically from the task's description, task prefix, keywords and
name with fixed templates. Each template belongs to one split:

- "train": used during meta-training;
- "unseen": held out, so evaluation can ask how the hypernetwork handles phrasings whose
  template it never saw (on seen and held-out tasks alike).

Templates that would produce an empty text (no task prefix, no keywords) or a text already
produced by an earlier template are skipped, so tasks get between a few and 16 phrasings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hypergen.data.tasks import Task

TRAIN = "train"
UNSEEN = "unseen"


@dataclass(frozen=True)
class Description:
    """One phrasing of a task.

    Attributes:
        text: The phrasing.
        template: Id of the template that made it.
        split: "train" or "unseen".
    """

    text: str
    template: str
    split: str


def _clean(text: str) -> str:
    """Collapse whitespace."""
    return " ".join(text.split())


def _sentence(text: str) -> str:
    """`text` cleaned, with a capital first letter and final punctuation."""
    text = _clean(text)
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _first_sentence(text: str) -> str:
    """The first sentence of `text`."""
    return _sentence(re.split(r"(?<=[.!?])\s+", _clean(text), maxsplit=1)[0])


def _clause(text: str) -> str:
    """`text` as a clause to follow other words: lowercase start, no final period."""
    text = _clean(text).rstrip(".")
    first = text.split(" ", 1)[0]
    if text and not (len(first) > 1 and first.isupper()):  # keep acronyms ("BBQ ...") as they are
        text = text[0].lower() + text[1:]
    return text


def _keywords(task: Task) -> str:
    return ", ".join(_clean(k) for k in task.keywords if k.strip())


def _readable_name(task: Task) -> str:
    """A readable name: "bbq_lite_json/age_ambig" -> "bbq lite json (age ambig)"."""
    parent, _, sub = task.name.replace("_", " ").partition("/")
    return _clean(f"{parent} ({sub})" if sub else parent)


def _with_keywords(task: Task, text: str) -> str:
    return f"{text} Keywords: {_keywords(task)}." if _keywords(task) else ""


# (template id, split, builder). Builders return "" when the template does not apply.
TEMPLATES: tuple[tuple[str, str, Callable[[Task], str]], ...] = (
    ("plain", TRAIN, lambda t: _sentence(t.description)),
    ("task_colon", TRAIN, lambda t: f"Task: {_sentence(t.description)}"),
    ("instruction", TRAIN, lambda t: f"Instruction: {_sentence(t.description)}"),
    ("keywords_after", TRAIN, lambda t: _with_keywords(t, _sentence(t.description))),
    ("first_sentence", TRAIN, lambda t: _first_sentence(t.description)),
    ("lowercase", TRAIN, lambda t: _clean(t.description).lower()),
    ("task_prefix", TRAIN, lambda t: _clean(t.task_prefix)),
    (
        "description_and_prefix",
        TRAIN,
        lambda t: (
            f"{_sentence(t.description)} {_clean(t.task_prefix)}" if t.task_prefix.strip() else ""
        ),
    ),
    ("what_to_do", TRAIN, lambda t: f"What to do: {_clause(t.description)}."),
    (
        "skills",
        TRAIN,
        lambda t: (
            f"A task about {_keywords(t)}. {_sentence(t.description)}" if _keywords(t) else ""
        ),
    ),
    ("named", TRAIN, lambda t: f"{_readable_name(t)}: {_sentence(t.description)}"),
    ("objective", UNSEEN, lambda t: f"Objective - {_clause(t.description)}."),
    ("please", UNSEEN, lambda t: f"Please help with the following. {_sentence(t.description)}"),
    ("keywords_only", UNSEEN, lambda t: f"Skills tested: {_keywords(t)}." if _keywords(t) else ""),
    (
        "name_and_keywords",
        UNSEEN,
        lambda t: (
            f"{_readable_name(t)} ({_keywords(t)}). {_first_sentence(t.description)}"
            if _keywords(t)
            else ""
        ),
    ),
    (
        "prefix_then_keywords",
        UNSEEN,
        lambda t: _with_keywords(t, _sentence(t.task_prefix)) if t.task_prefix.strip() else "",
    ),
)


def describe_prefix(description: str) -> str:
    """A description as a prompt prefix: what the ``+desc`` evaluation systems put before the
    input, and what the distillation teacher of meta-training reads."""
    return f"{description}\n\n"


def template_splits() -> dict[str, str]:
    """Map each template id to its split ("train" or "unseen")."""
    return {template: split for template, split, _ in TEMPLATES}


def describe(task: Task, split: str | None = None) -> list[Description]:
    """Phrasings of `task`, in template order, without duplicates.

    Args:
        task: The task to describe.
        split: If given ("train" or "unseen"), only phrasings from that split's templates.

    Returns:
        The task's descriptions.
    """
    if split not in (None, TRAIN, UNSEEN):
        raise ValueError(f"split must be None, {TRAIN!r} or {UNSEEN!r}, got {split!r}")
    seen: set[str] = set()
    out: list[Description] = []
    for template, template_split, build in TEMPLATES:
        text = build(task).strip()
        if not text or text in seen:
            continue
        seen.add(text)
        if split is None or template_split == split:
            out.append(Description(text=text, template=template, split=template_split))
    return out
