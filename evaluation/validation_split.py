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

**Family-out validation** (``--family-out N --out FILE``): a second split whose validation tasks
are N whole training *families* taken out of training (a seeded sample of the families whose
training tasks are all of ``--kind``, with at least ``--min-family-examples`` examples, outside
the validation families), the rest unchanged. The validation tasks above are mostly unseen
siblings of trained tasks; the held-out tasks are unseen families, and the two have disagreed
(README "6. The shipped checkpoint"). A recipe trained on this split and scored on its validation
tasks is measured on unseen families without spending the held-out tasks.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import defaultdict
from pathlib import Path

import yaml

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


def family_out(
    suite: str | Path,
    split: TaskSplit,
    families: int,
    seed: int = 0,
    kind: str | None = "multiple_choice",
    min_examples: int = 150,
) -> tuple[list[str], list[str]]:
    """(train tasks, validation tasks) of a family-out split of ``split`` (module docstring): a
    seeded sample of ``families`` training families (their tasks all of ``kind``, None: any;
    ``min_examples`` usable examples together; none of the validation families) leaves training
    and becomes the validation tasks.

    Raises:
        ValueError: fewer eligible families than ``families``.
    """
    tasks = load_suite(suite, split.train_tasks, split.max_prompt_chars)
    by_family: dict[str, list[str]] = defaultdict(list)
    for name in split.train_tasks:
        by_family[name.split("/")[0]].append(name)
    taken = {n.split("/")[0] for n in split.validation_tasks}
    eligible = sorted(
        family
        for family, names in by_family.items()
        if family not in taken
        and (kind is None or all(tasks[n].kind == kind for n in names))
        and sum(len(tasks[n].examples) for n in names) >= min_examples
    )
    if len(eligible) < families:
        raise ValueError(f"{len(eligible)} eligible families, fewer than {families}")
    out = set(random.Random(seed).sample(eligible, families))
    train = [n for n in split.train_tasks if n.split("/")[0] not in out]
    return train, [n for n in split.train_tasks if n.split("/")[0] in out]


def write_family_out(
    path: Path, source: Path, train: list[str], validation: list[str], how: str, command: str
):
    """The family-out split as a YAML file with ``source``'s other settings (``load_split``
    reads it)."""
    raw = yaml.safe_load(source.read_text())
    raw.update(train_tasks=train, validation_tasks=validation)
    header = f"# Family-out split of {source}: {how}.\n# Made by: {command}\n"
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    from hypergen.layout import suite_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="evaluation/splits/bigbench.yaml")
    p.add_argument("--suite", default="", help="task folder (default $HYPERGEN_HOME/data/bigbench)")
    p.add_argument("--min-examples", type=int, default=40)
    p.add_argument("--per-family", type=int, default=4)
    p.add_argument("--family-out", type=int, metavar="N", help="write a family-out split (--out)")
    p.add_argument("--out", help="the family-out split's YAML file (never overwritten)")
    p.add_argument("--kind", default="multiple_choice", help="family-out: the families' kind")
    p.add_argument("--min-family-examples", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.family_out is not None and (not args.out or Path(args.out).exists()):
        p.error(f"--family-out needs --out FILE, a file that does not exist yet: {args.out}")
    logging.basicConfig(level=logging.ERROR)
    split = load_split(args.split)
    suite = suite_dir(args.suite)
    if not Path(suite).is_dir():
        p.error(f"no task suite at {suite} (run `make data`)")
    if args.family_out is not None:
        try:
            train, validation = family_out(
                suite, split, args.family_out, args.seed, args.kind, args.min_family_examples
            )
        except ValueError as err:
            p.error(str(err))
        how = (
            f"{args.family_out} {args.kind} families (random.Random({args.seed}), >= "
            f"{args.min_family_examples} examples each) moved from training to validation"
        )
        command = " ".join(["python -m evaluation.validation_split", *(argv or sys.argv[1:])])
        write_family_out(Path(args.out), Path(args.split), train, validation, how, command)
        print(f"{args.out}: {len(train)} training tasks, validation: {', '.join(validation)}")
        return 0
    candidates = candidate_tasks(suite, split, args.min_examples)
    chosen = choose_validation(candidates, args.per_family)
    print(f"validation_tasks:  # {len(chosen)} of {len(candidates)} candidates")
    for name in chosen:
        print(f"  - {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
