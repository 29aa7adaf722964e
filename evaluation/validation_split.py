"""Choose a split's validation tasks: unseen tasks to pick checkpoints and recipes on.

Every choice made by looking at the held-out tasks' scores spends them as a test. The validation
tasks take that role instead: tasks of the suite that no checkpoint trains on (not named by the
split's training tasks), outside the held-out tasks' families, chosen by a fixed rule that looks
at no score, so that they can be chosen once and left alone:

- every task file of the suite, in name order, minus the held-out families, the training tasks
  (and subtasks of a trained parent), BIG-bench's ``simple_arithmetic*`` API demos and files over
  ``max_file_mb``;
- at least ``min_examples`` usable examples (prompts within the split's ``max_prompt_chars``);
- a description of its own: none shared with a training task or an earlier candidate (the
  hypernetwork only sees the description);
- at most ``per_family`` tasks per family (the name before "/"), evenly spaced by name.

On BIG-bench these are mostly unseen subtasks of trained families (``arithmetic/3_digit_addition``
beside a trained ``arithmetic/2_digit_multiplication``): nearer to training than the held-out
tasks, and many more of them.

    python -m evaluation.validation_split [--split evaluation/splits/bigbench.yaml] [--suite DIR]

prints the list as YAML, to paste under ``validation_tasks:`` of the split.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

from hypergen.data.tasks import TaskSplit, load_split, load_suite, named_by

DEMO_PREFIXES = ("simple_arithmetic",)


def candidate_tasks(
    suite: str | Path, split: TaskSplit, min_examples: int = 40, max_file_mb: float = 10.0
) -> list[str]:
    """Every task of ``suite`` that may validate ``split`` (module docstring), in name order."""
    suite = Path(suite)
    heldout_roots = {n.split("/")[0] for n in split.heldout_tasks}
    train = set(split.train_tasks)
    names = []
    for path in sorted(suite.rglob("task.json")):
        name = path.parent.relative_to(suite).as_posix()
        root = name.split("/")[0]
        if root in heldout_roots or named_by(name, train) or root.startswith(DEMO_PREFIXES):
            continue
        if path.stat().st_size > max_file_mb * 1e6:
            continue
        names.append(name)
    tasks = load_suite(suite, names, split.max_prompt_chars) if names else {}
    seen = {t.description for t in load_suite(suite, split.train_tasks).values()}
    chosen = []
    for name, task in tasks.items():
        if len(task.examples) < min_examples or task.description in seen:
            continue
        seen.add(task.description)
        chosen.append(name)
    return chosen


def evenly_spaced(names: list[str], k: int) -> list[str]:
    """``k`` of ``names`` spread over the list (all of them when there are at most ``k``)."""
    if len(names) <= k:
        return list(names)
    return [names[(i * len(names)) // k] for i in range(k)]


def choose_validation(candidates: list[str], per_family: int = 4) -> list[str]:
    """At most ``per_family`` candidates per family, evenly spaced by name; sorted."""
    families: dict[str, list[str]] = defaultdict(list)
    for name in sorted(candidates):
        families[name.split("/")[0]].append(name)
    return sorted(n for names in families.values() for n in evenly_spaced(names, per_family))


def main(argv: list[str] | None = None) -> int:
    from hypergen.layout import suite_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="evaluation/splits/bigbench.yaml")
    p.add_argument("--suite", default="", help="task folder (default $HYPERGEN_HOME/data/bigbench)")
    p.add_argument("--min-examples", type=int, default=40)
    p.add_argument("--per-family", type=int, default=4)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    split = load_split(args.split)
    suite = suite_dir(args.suite)
    if not Path(suite).is_dir():
        p.error(f"no task suite at {suite} (run `make data`)")
    candidates = candidate_tasks(suite, split, args.min_examples)
    chosen = choose_validation(candidates, args.per_family)
    print(f"validation_tasks:  # {len(chosen)} of {len(candidates)} candidates")
    for name in chosen:
        print(f"  - {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
