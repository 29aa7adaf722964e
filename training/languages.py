"""The language of each task, for meta-training on a description + language condition.

The table (``hypergen.data.task_languages``) is written by hand: BIG-bench task files name no
language. This command checks it against a split and the suite, and prints which languages the
training and held-out tasks cover:

    python training/languages.py [--split evaluation/splits/bigbench.yaml] [--table ...] [--data-dir ...]
"""

from __future__ import annotations

import argparse
import sys

from hypergen.config import DEFAULT_LANGUAGE_FEATURES, DEFAULT_TASK_LANGUAGES
from hypergen.data.task_languages import NON_ENGLISH_KEYWORDS, TaskLanguages
from hypergen.data.tasks import load_split
from hypergen.layout import suite_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="evaluation/splits/bigbench.yaml")
    p.add_argument("--table", default=DEFAULT_TASK_LANGUAGES)
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
