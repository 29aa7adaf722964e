"""The language of each task: a reviewed table next to a split (``TaskLanguages``).

    languages = TaskLanguages.load("evaluation/splits/bigbench_languages.yaml")
    languages.of("multiemo/all_text_de")           # ["deu"]
    languages.primary("swahili_english_proverbs")  # "swa": what the task is conditioned on

BIG-bench task files name no language (their keywords only flag "non-English" and the like, and
not always), so meta-training and evaluation of a description + language condition read the
languages from this table; ``python training/languages.py`` checks it against a split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hypergen.conditions.language import iso639_3
from hypergen.config import check_keys
from hypergen.data.tasks import Task

# BIG-bench keywords that say a task is (partly) not in English, without saying which language
NON_ENGLISH_KEYWORDS = frozenset(
    {"non-English", "multilingual", "translation", "low-resource language"}
)


@dataclass
class TaskLanguages:
    """Task -> its languages (ISO 639-3, the one it is conditioned on first).

    Args:
        default: the language of unlisted tasks.
        tasks: "task" (covers its subtasks) or "task/subtask" -> codes (639-1 or 639-3).
    """

    default: str = "eng"
    tasks: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.default = iso639_3(self.default)
        for name, codes in self.tasks.items():
            if not isinstance(codes, list) or not codes:
                raise ValueError(f"task {name!r}: languages must be a non-empty list of codes")
            try:
                self.tasks[name] = [iso639_3(c) for c in codes]
            except (TypeError, ValueError) as err:
                raise ValueError(f"task {name!r}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> TaskLanguages:
        data = yaml.safe_load(Path(path).read_text()) or {}
        check_keys(data, ("default", "tasks"), str(path))
        return cls(**data)

    def of(self, task: str) -> list[str]:
        """The task's languages: its own entry, else its parent task's, else ``[default]``."""
        return self.tasks.get(task) or self.tasks.get(task.split("/")[0]) or [self.default]

    def primary(self, task: str) -> str:
        """The language the task is conditioned on."""
        return self.of(task)[0]

    def listed(self, task: str) -> bool:
        return task in self.tasks or task.split("/")[0] in self.tasks

    def unlisted_non_english(self, tasks: Iterable[Task]) -> list[str]:
        """Tasks whose keywords flag non-English content but that the table does not list."""
        return sorted(
            t.name
            for t in tasks
            if NON_ENGLISH_KEYWORDS & set(t.keywords) and not self.listed(t.name)
        )
