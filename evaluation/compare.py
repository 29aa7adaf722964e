"""Paired difference between two evaluation runs: is checkpoint A better than B on the same examples?

A run's report compares systems within one checkpoint; choosing between checkpoints needs the
same systems of two runs compared example by example. Two ``results.json`` files scored the same
tasks on the same sampled examples (same split, seed and ``max_examples``: checked through each
task's sampled indices) give, per task group, the macro-average of ``A − B`` for each system with
a bootstrap interval (tasks' examples resampled independently, as for Δ vs base), and a second
interval that resamples the tasks themselves (how far the difference would carry to other tasks
like these; wider when a few tasks carry it), with the count of tasks that went up and down:

    python -m evaluation.compare results/mine results/smollm2-validation [--systems generated]

A task either run did not score (missing, or other examples) is left out and named.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from evaluation.report import GROUP_ORDER
from hypergen.metrics import bootstrap_ci


def load_results(path: str | Path) -> dict[str, Any]:
    """A run's ``results.json`` (``path`` is the file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json at {path}")
    return json.loads(path.read_text())


def paired_runs(
    a: dict[str, Any],
    b: dict[str, Any],
    system: str,
    num_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``system`` of run ``a`` minus the same system of run ``b``, per task group.

    Returns:
        ``{"system", "groups": {group: {"delta": {mean, ci, tasks}, "task_ci", "up", "down",
        "examples", "per_task": {task: mean}}}, "skipped": {task: reason}}``; ``task_ci`` resamples
        the tasks' mean differences; a group without a common task is absent.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    skipped: dict[str, str] = {}
    ra, rb = a["results"].get(system, {}), b["results"].get(system, {})
    for task, info in a["tasks"].items():
        other = b["tasks"].get(task)
        if other is None:
            skipped[task] = "not in the second run"
        elif other["indices"] != info["indices"]:
            skipped[task] = "different examples"
        elif ra.get(task, {}).get("status") != "ok" or rb.get(task, {}).get("status") != "ok":
            skipped[task] = f"{system} did not run in both"
        else:
            metric = info["metric"]
            diff = [x - y for x, y in zip(ra[task]["scores"][metric], rb[task]["scores"][metric])]
            groups.setdefault(info["group"], {})[task] = diff
    out: dict[str, Any] = {"system": system, "groups": {}, "skipped": skipped}
    for group, diffs in sorted(groups.items(), key=lambda kv: GROUP_ORDER.index(kv[0])):
        mean, lo, hi = bootstrap_ci(list(diffs.values()), num_samples, seed)
        task_means = [sum(d) / len(d) for d in diffs.values()]
        _, task_lo, task_hi = bootstrap_ci(task_means, num_samples, seed)
        out["groups"][group] = {
            "delta": {"mean": mean, "ci": [lo, hi], "tasks": len(diffs)},
            "task_ci": [task_lo, task_hi],
            "up": sum(m > 0 for m in task_means),
            "down": sum(m < 0 for m in task_means),
            "examples": sum(len(d) for d in diffs.values()),
            "per_task": {t: sum(d) / len(d) for t, d in diffs.items()},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="results folder or results.json of the first run")
    p.add_argument("b", help="... of the run it is compared against")
    p.add_argument("--systems", nargs="+", help="systems to compare (default: those both ran)")
    p.add_argument("--per-task", action="store_true", help="also print each task's difference")
    p.add_argument("--samples", type=int, default=1000, help="bootstrap draws")
    args = p.parse_args(argv)
    try:
        a, b = load_results(args.a), load_results(args.b)
    except (OSError, ValueError) as err:
        p.error(str(err))
    systems = args.systems or [s for s in a["results"] if s in b["results"]]
    for label, run in (("A", a), ("B", b)):
        checkpoint = run.get("checkpoint") or {}
        print(f"{label} = {checkpoint.get('path')} ({(checkpoint.get('hash') or '')[:12]})")
    for system in systems:
        result = paired_runs(a, b, system, args.samples)
        for group, entry in result["groups"].items():
            d = entry["delta"]
            lo, hi = entry["task_ci"]
            print(
                f"{group:10s} {system:22s} A − B {d['mean']:+.3f} "
                f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] ({d['tasks']} tasks, "
                f"{entry['examples']} examples); tasks resampled [{lo:+.3f}, {hi:+.3f}], "
                f"{entry['up']} up, {entry['down']} down"
            )
            if args.per_task:
                for task, mean in entry["per_task"].items():
                    print(f"    {task:70s} {mean:+.3f}")
        for task, reason in result["skipped"].items():
            print(f"  skipped {task} ({system}): {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
