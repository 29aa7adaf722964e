"""Task loading, example splits, descriptions, the committed BIG-bench split and `make data`.

The task files under tests/data/tasks are hand-written in BIG-bench's JSON format (no BIG-bench
data may enter the repository).
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import pytest

from hypergen.data.descriptions import TRAIN, UNSEEN, describe, template_splits
from hypergen.data.tasks import (
    GENERATIVE,
    MULTIPLE_CHOICE,
    TaskSplit,
    load_split,
    load_suite,
    load_task_file,
    split_examples,
)
from training.prepare_data import extract_tasks, member_target

DATA = Path(__file__).parent / "data" / "tasks"
SUITE = DATA / "suite"
REPO = Path(__file__).resolve().parents[1]


def test_multiple_choice_file() -> None:
    task = load_task_file(SUITE / "mc_toy" / "task.json")
    assert task.name == "mc_toy"
    assert task.kind == MULTIPLE_CHOICE
    assert task.keywords == ("common sense", "multiple choice")
    assert task.metrics == ("multiple_choice_grade",)
    # The empty input and the all-equal scores are skipped.
    assert [ex.input for ex in task.examples] == [
        "What colour is a ripe banana?",
        "What colour is a lime?",
        "What colour is a blueberry?",
        "What colour is a plum?",
    ]
    banana, lime, blueberry, _ = task.examples
    assert banana.prompt == "Answer with a colour.\nQ: What colour is a ripe banana?\nA:"
    assert banana.options == (" blue", " purple", " yellow")  # sorted, leading space
    assert banana.correct == (2,)
    assert banana.completion == " yellow"
    assert banana.references == ()
    assert lime.options == (" black", " green", " red")  # option text is stripped
    assert lime.completion == " green"
    assert blueberry.correct == (0, 1)  # both options with the top score
    assert blueberry.completion == " blue"


def test_generative_file_honours_prefixes() -> None:
    task = load_task_file(SUITE / "gen_toy" / "task.json")
    assert task.kind == GENERATIVE
    assert task.task_prefix == ""
    first = task.examples[0]
    assert first.prompt == "Word: cat\nReversed:"
    assert first.completion == " tac"
    assert first.options == ()
    dog = task.examples[1]
    assert dog.references == ("god", "GOD")
    assert dog.completion == " god"
    # The blank target and the empty input are skipped.
    assert "sun" not in [ex.input for ex in task.examples]
    assert all(ex.input for ex in task.examples)
    for ex in task.examples:
        assert not ex.prompt.endswith(" ") and ex.completion.startswith(" ")


def test_max_prompt_chars_drops_long_examples() -> None:
    task = load_task_file(SUITE / "mc_toy" / "task.json", max_prompt_chars=54)
    assert [ex.input for ex in task.examples] == [
        "What colour is a lime?",
        "What colour is a plum?",
    ]


def test_suite_names_subtasks_and_skips_empty(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hypergen.data.tasks"):
        tasks = load_suite(SUITE)
    assert list(tasks) == ["family_toy/sub_a", "family_toy/sub_b", "gen_toy", "mc_toy"]
    assert "empty_toy" in caplog.text
    sub_b = tasks["family_toy/sub_b"]
    assert sub_b.description == "Decide whether a number is even"
    assert sub_b.examples[0].prompt == "Q: Is 4 even?\n - no\n - yes\nA:"  # choices appended
    # A parent's name selects all of its subtasks.
    assert list(load_suite(SUITE, names=["family_toy", "gen_toy"])) == [
        "family_toy/sub_a",
        "family_toy/sub_b",
        "gen_toy",
    ]


@pytest.mark.parametrize(
    ("folder", "message"), [("bad_json", "invalid JSON"), ("no_examples", "'examples'")]
)
def test_malformed_file_names_the_file(folder: str, message: str) -> None:
    path = DATA / "malformed" / folder / "task.json"
    with pytest.raises(ValueError, match=message) as info:
        load_task_file(path)
    assert str(path) in str(info.value)


def test_split_examples_deterministic_and_disjoint() -> None:
    task = load_task_file(SUITE / "gen_toy" / "task.json")
    train, test = split_examples(task, test_fraction=0.3, seed=0)
    assert (train, test) == split_examples(task, test_fraction=0.3, seed=0)
    assert len(test) == 3
    assert len(train) + len(test) == len(task.examples)
    ids = {id(ex) for ex in train}
    assert not any(id(ex) in ids for ex in test)
    # The duplicated input "cat" never straddles the split.
    assert not ({ex.input for ex in train} & {ex.input for ex in test})
    assert len(split_examples(task, test_fraction=0.9, seed=0, max_test=2)[1]) == 2
    assert split_examples(task, test_fraction=0.0, seed=0)[1] == []
    with pytest.raises(ValueError, match="test_fraction"):
        split_examples(task, test_fraction=1.5, seed=0)


def test_descriptions_templates_split_disjoint() -> None:
    task = load_task_file(SUITE / "mc_toy" / "task.json")
    descriptions = describe(task)
    assert descriptions == describe(task)
    texts = [d.text for d in descriptions]
    assert len(texts) == len(set(texts)) >= 10
    train = {d.template for d in descriptions if d.split == TRAIN}
    unseen = {d.template for d in descriptions if d.split == UNSEEN}
    assert train and unseen and not (train & unseen)
    assert set(template_splits().values()) == {TRAIN, UNSEEN}
    assert {d.split for d in describe(task, split=UNSEEN)} == {UNSEEN}
    assert any("Answer with a colour." in t for t in texts)  # the task prefix is used
    assert any("common sense" in t for t in texts)  # and the keywords


def test_committed_split_keeps_heldout_out_of_training() -> None:
    split = load_split(REPO / "evaluation" / "splits" / "bigbench.yaml")
    assert split.train_tasks and split.heldout_tasks
    assert len(set(split.train_tasks)) == len(split.train_tasks)
    heldout_roots = {name.split("/")[0] for name in split.heldout_tasks}
    for name in split.train_tasks:
        # Neither the task, a subtask of a held-out task, nor the parent of a held-out subtask.
        assert name.split("/")[0] not in heldout_roots, name
    assert 0.0 < split.test_fraction < 1.0


def test_split_rejects_overlap_and_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overlap"):
        TaskSplit(train_tasks=["family_toy/sub_a"], heldout_tasks=["family_toy"])
    path = tmp_path / "split.yaml"
    path.write_text("train_tasks: [a]\nheldout_tasks: [b]\ncolour: blue\n")
    with pytest.raises(ValueError, match="colour"):
        load_split(path)


def test_split_examples_from_task_split() -> None:
    split = TaskSplit(
        train_tasks=["gen_toy"], heldout_tasks=["mc_toy"], seed=1, test_fraction=0.5, max_test=2
    )
    tasks = split.load(SUITE)
    assert list(tasks) == ["gen_toy", "mc_toy"]
    train, test = split.examples(tasks["mc_toy"])
    assert len(test) == 2 and len(train) == 2


def test_prepare_data_extracts_only_task_files(tmp_path: Path) -> None:
    tarball = tmp_path / "bigbench-1.0.0.tar.gz"
    root = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    members = {
        root + "toy/task.json": (SUITE / "gen_toy" / "task.json").read_bytes(),
        root + "toy/README.md": b"not a task file",
        root + "fam/sub/task.json": (SUITE / "mc_toy" / "task.json").read_bytes(),
        "bigbench-1.0.0/setup.py": b"",
    }
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    counts = extract_tasks(tarball, tmp_path / "cache")
    assert counts == {"files": 2, "tasks": 1, "generative": 1, "multiple_choice": 1}
    assert sorted(
        p.relative_to(tmp_path / "cache").as_posix() for p in tmp_path.rglob("*.json")
    ) == [
        "fam/sub/task.json",
        "toy/task.json",
    ]
    for unsafe in ("/etc/task.json", root + "../../task.json"):
        with pytest.raises(ValueError, match="unsafe"):
            member_target(unsafe)
