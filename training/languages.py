"""The language of each task, for meta-training on a description + language condition.

    languages = TaskLanguages.load("evaluation/splits/bigbench_languages.yaml")
    languages.of("multiemo/all_text_de")        # ["deu"]
    languages.primary("swahili_english_proverbs")  # "swa": what the task is conditioned on

BIG-bench task files name no language (their keywords only flag "non-English" and the like, and
not always), so the languages come from a reviewed table next to the split. This command checks
the table against a split and the suite, and prints which languages the training and held-out
tasks cover:

    python training/languages.py [--split evaluation/splits/bigbench.yaml] [--table ...] [--data-dir ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hypergen.conditions.language import iso639_3
from hypergen.config import DEFAULT_LANGUAGE_FEATURES, check_keys
from hypergen.data.tasks import Task, load_split
from hypergen.layout import suite_dir

DEFAULT_TABLE = "evaluation/splits/bigbench_languages.yaml"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="evaluation/splits/bigbench.yaml")
    p.add_argument("--table", default=DEFAULT_TABLE)
    p.add_argument("--data-dir", help="the suite (default $HYPERGEN_HOME/data/bigbench)")
    p.add_argument(
        "--language-features",
        default=DEFAULT_LANGUAGE_FEATURES,
        help="check that every code has these URIEL features",
    )
    args = p.parse_args(argv)
    from hypergen.conditions.language import LanguageConditioner

    languages = TaskLanguages.load(args.table)
    split = load_split(args.split)
    tasks = split.load(suite_dir(args.data_dir))
    conditioner = LanguageConditioner(args.language_features)
    problems = [
        f"{name}: keywords {sorted(NON_ENGLISH_KEYWORDS & set(tasks[name].keywords))} "
        f"but not in {args.table}"
        for name in languages.unlisted_non_english(tasks.values())
    ]
    for name in tasks:
        for code in languages.of(name):
            if code not in conditioner.languages:
                problems.append(f"{name}: {code} has no URIEL {conditioner.name} features")
    groups = {"training": split.train_tasks, "held-out": split.heldout_tasks}
    seen: dict[str, set[str]] = {}
    for group, names in groups.items():
        members = sorted(n for n in tasks if n in names or n.split("/")[0] in names)
        by_language: dict[str, list[str]] = {}
        for name in members:
            by_language.setdefault(languages.primary(name), []).append(name)
        seen[group] = set(by_language)
        print(f"{group} tasks: {len(members)} in {len(by_language)} languages")
        for code, names_ in sorted(by_language.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = ", ".join(names_) if code != languages.default else f"{len(names_)} tasks"
            print(f"  {code}: {shown}")
    unseen = sorted(seen["held-out"] - seen["training"])
    print(f"held-out languages not in training: {', '.join(unseen) or 'none'}")
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
