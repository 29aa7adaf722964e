"""Validation tasks: the split field, the rule that chooses them, and the harness group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluation.config import load_config
from evaluation.harness import run
from evaluation.validation_split import (
    candidate_tasks,
    choose_validation,
    evenly_spaced,
    family_out,
    main,
)
from hypergen.data.tasks import TaskSplit, load_split

EVAL_SUITE = Path(__file__).parent / "data" / "eval_tasks" / "suite"
TINY_CONFIG = Path(__file__).parents[1] / "evaluation" / "configs" / "tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


def _task(folder: Path, description: str, n: int) -> None:
    folder.mkdir(parents=True)
    examples = [{"input": f"{description} {i}?", "target": str(i)} for i in range(n)]
    data = {"name": folder.name, "description": description, "keywords": [], "examples": examples}
    (folder / "task.json").write_text(json.dumps(data))


def test_split_rejects_validation_tasks_that_are_trained_on_or_held_out() -> None:
    ok = TaskSplit(train_tasks=["fam/a"], heldout_tasks=["held"], validation_tasks=["fam/b"])
    assert ok.validation_tasks == ["fam/b"]
    for bad in (["fam/a"], ["fam"], ["held/x"], ["held"]):
        with pytest.raises(ValueError, match="validation_tasks overlap"):
            TaskSplit(train_tasks=["fam/a"], heldout_tasks=["held"], validation_tasks=bad)
    with pytest.raises(ValueError, match="validation_tasks overlap"):  # a trained parent
        TaskSplit(train_tasks=["whole"], heldout_tasks=["held"], validation_tasks=["whole/sub"])
    assert TaskSplit(train_tasks=["a"], heldout_tasks=["b"]).validation_tasks == []


def test_committed_validation_tasks_follow_the_rule() -> None:
    split = load_split(REPO / "evaluation" / "splits" / "bigbench.yaml")
    names = split.validation_tasks
    assert len(names) == 33 and names == sorted(names)
    families = [n.split("/")[0] for n in names]
    assert max(families.count(f) for f in families) <= 4
    assert not {n.split("/")[0] for n in split.heldout_tasks} & set(families)
    assert not set(names) & set(split.train_tasks)


def test_candidates_skip_trained_held_out_small_demo_and_repeated_descriptions(
    tmp_path: Path,
) -> None:
    suite = tmp_path / "suite"
    _task(suite / "fam" / "trained", "Add numbers", 50)
    _task(suite / "fam" / "same_words", "Add numbers", 50)  # a trained task's description
    _task(suite / "fam" / "small", "Subtract numbers", 39)  # under min_examples
    for i in range(6):
        _task(suite / "fam" / f"s{i}", f"Multiply by {i}", 40)
    _task(suite / "fam" / "s0_copy", "Multiply by 0", 45)  # an earlier candidate's description
    _task(suite / "held" / "x", "Held-out family", 60)
    _task(suite / "simple_arithmetic_json", "API demo", 60)
    _task(suite / "solo", "A family of one", 80)
    split = TaskSplit(train_tasks=["fam/trained"], heldout_tasks=["held"])
    candidates = candidate_tasks(suite, split, min_examples=40)
    assert candidates == [f"fam/s{i}" for i in range(6)] + ["solo"]
    chosen = choose_validation(candidates, per_family=3)
    assert chosen == ["fam/s0", "fam/s2", "fam/s4", "solo"]


def test_evenly_spaced() -> None:
    names = [str(i) for i in range(10)]
    assert evenly_spaced(names, 4) == ["0", "2", "5", "7"]
    assert evenly_spaced(names[:3], 4) == names[:3]


def test_harness_reports_validation_tasks_as_their_own_group(
    tmp_path, llama_dir, checkpoint_dir
) -> None:
    split = tmp_path / "split.yaml"
    split.write_text(
        "train_tasks: [colours]\nvalidation_tasks: [plurals]\n"
        "heldout_tasks: [opposites, capitals]\nseed: 0\ntest_fraction: 0.5\n"
    )
    suite = tmp_path / "suite"
    shutil.copytree(EVAL_SUITE, suite)
    config = load_config(
        TINY_CONFIG,
        [
            f"base_model={llama_dir}",
            f"checkpoint={checkpoint_dir}",
            f"suite={suite}",
            f"split={split}",
            f"out={tmp_path / 'out'}",
            "tasks=validation",
            "systems=[base, generated, generated_other_task]",
            "generation_check=false",
        ],
    )
    results = run(config)
    assert {name: t["group"] for name, t in results["tasks"].items()} == {"plurals": "validation"}
    assert set(results["summary"]) == {"validation"}
    assert results["summary"]["validation"]["generated"]["tasks_ok"] == 1
    report = (tmp_path / "out" / "results.md").read_text()
    assert "Validation tasks" in report

    # a split without validation tasks says so
    split.write_text("train_tasks: [colours]\nheldout_tasks: [opposites]\n")
    with pytest.raises(ValueError, match="no validation_tasks"):
        run(config)


def test_validation_config_loads() -> None:
    config = load_config(REPO / "evaluation" / "configs" / "smollm2_validation.yaml", [])
    assert config.tasks == "validation" and not config.generation_check
    assert "generated_other_task" in config.systems


def _run(scores: dict[str, list[float]], indices=None, group="validation", status="ok") -> dict:
    tasks = {
        t: {"group": group, "metric": "em", "indices": indices or list(range(len(s)))}
        for t, s in scores.items()
    }
    results = {"generated": {t: {"status": status, "scores": {"em": s}} for t, s in scores.items()}}
    return {"tasks": tasks, "results": results, "checkpoint": {"path": "x", "hash": "y"}}


def test_compare_pairs_two_runs_on_the_same_examples(tmp_path, capsys) -> None:
    from evaluation.compare import main, paired_runs

    a = _run({"t1": [1, 1, 0, 0], "t2": [1, 0, 0, 0], "t3": [1, 1]})
    b = _run({"t1": [0, 1, 0, 0], "t2": [1, 0, 0, 0], "t3": [0, 0]})
    b["tasks"]["t3"]["indices"] = [5, 6]  # other examples: not comparable
    result = paired_runs(a, b, "generated", num_samples=200)
    entry = result["groups"]["validation"]
    assert entry["per_task"] == {"t1": 0.25, "t2": 0.0}
    assert entry["delta"]["mean"] == pytest.approx(0.125) and entry["delta"]["tasks"] == 2
    lo, hi = entry["delta"]["ci"]
    assert lo <= 0.125 <= hi
    assert entry["up"] == 1 and entry["down"] == 0
    task_lo, task_hi = entry["task_ci"]
    assert task_lo == pytest.approx(0.0) and task_hi == pytest.approx(0.25)  # two task means
    assert result["skipped"] == {"t3": "different examples"}
    # a run against itself differs by exactly zero
    same = paired_runs(a, a, "generated")["groups"]["validation"]["delta"]
    assert same["mean"] == 0 and same["ci"] == [0, 0]

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main([str(tmp_path / "a"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "validation generated" in out and "+0.125" in out and "skipped t3" in out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a"), str(tmp_path / "missing")])


def _mc_task(folder: Path, description: str, n: int) -> None:
    folder.mkdir(parents=True)
    examples = [
        {"input": f"{description} {i}?", "target_scores": {"yes": i % 2, "no": 1 - i % 2}}
        for i in range(n)
    ]
    data = {"name": folder.name, "description": description, "keywords": [], "examples": examples}
    (folder / "task.json").write_text(json.dumps(data))


def test_family_out_moves_whole_eligible_families_to_validation(tmp_path: Path) -> None:
    """Whole families leave training: only families all of the kind, with enough examples
    together, outside the validation families; the same seed picks the same ones, and the file
    written is a split that loads."""
    suite = tmp_path / "suite"
    for family in ("alpha", "beta", "gamma"):
        for sub in ("x", "y"):
            _mc_task(suite / family / sub, f"{family} {sub}", 20)
    _mc_task(suite / "small" / "x", "small x", 10)  # too few examples
    _task(suite / "mixed" / "gen", "mixed generative", 50)  # not all multiple choice
    _mc_task(suite / "mixed" / "mc", "mixed mc", 50)
    _mc_task(suite / "valfam" / "a", "valfam a", 50)  # a validation family
    _mc_task(suite / "held", "held", 50)
    train = [
        *(f"{f}/{s}" for f in ("alpha", "beta", "gamma") for s in ("x", "y")),
        "small/x",
        "mixed/gen",
        "mixed/mc",
        "valfam/a",
    ]
    split = TaskSplit(train_tasks=train, heldout_tasks=["held"], validation_tasks=["valfam/b"])
    kept, out = family_out(suite, split, families=2, seed=0, min_examples=40)
    assert {n.split("/")[0] for n in out} <= {"alpha", "beta", "gamma"} and len(out) == 4
    assert sorted(kept + out) == sorted(train) and not set(kept) & set(out)
    assert family_out(suite, split, families=2, seed=0, min_examples=40) == (kept, out)
    with pytest.raises(ValueError, match="3 eligible families, fewer than 4"):
        family_out(suite, split, families=4, min_examples=40)

    source = tmp_path / "split.yaml"
    source.write_text(
        f"train_tasks: {train}\nheldout_tasks: [held]\nvalidation_tasks: [valfam/b]\nseed: 3\n"
    )
    target = tmp_path / "family-out.yaml"
    args = ["--split", str(source), "--suite", str(suite), "--family-out", "2", "--out"]
    assert main([*args, str(target), "--min-family-examples", "40"]) == 0
    written = load_split(target)
    assert (written.train_tasks, written.validation_tasks, written.seed) == (kept, out, 3)
    before = target.read_text()
    with pytest.raises(SystemExit):  # never overwritten
        main([*args, str(target), "--min-family-examples", "40"])
    assert target.read_text() == before
