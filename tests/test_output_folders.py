"""Output folders: a write never deletes what the user did not create (hypergen.atomic).

Every test keeps a sibling file and a sibling folder next to the destination and checks, with a
snapshot of the whole test folder, that nothing outside the destination changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hypergen.adapters.export import ADAPTER_FOLDER, load_peft
from hypergen.atomic import FolderKind, atomic_folder, atomic_write_text, check_destination
from hypergen.checkpoint import CHECKPOINT_FOLDER, DEFAULT_CHECKPOINT, load_checkpoint
from hypergen.cli import main

KIND = FolderKind("test output", "out.json", frozenset({"out.json", "data.bin"}))


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every path under ``root`` (except ``skip`` and what is inside it) -> content digest."""
    state = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


@pytest.fixture
def area(tmp_path) -> Path:
    """A folder with the user's things next to where outputs go."""
    (tmp_path / "sibling.txt").write_text("keep me")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("mine")
    return tmp_path


def write(folder: Path, text: str, **kwargs) -> Path:
    with atomic_folder(folder, KIND, **kwargs) as tmp:
        (tmp / "out.json").write_text(json.dumps({"v": text}))
        (tmp / "data.bin").write_bytes(text.encode())
    return folder


def value(folder: Path) -> str:
    return json.loads((folder / "out.json").read_text())["v"]


def no_temporaries(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


# --- hypergen.atomic ---------------------------------------------------------------------------


def test_new_and_empty_folders_are_written(area):
    before = snapshot(area)
    write(area / "deep" / "new", "a")
    (area / "empty").mkdir()
    write(area / "empty", "b")
    assert value(area / "deep" / "new") == "a" and value(area / "empty") == "b"
    after = snapshot(area)
    assert {k: v for k, v in after.items() if k in before} == before
    assert no_temporaries(area) and no_temporaries(area / "deep")
    assert oct((area / "empty").stat().st_mode & 0o777) != oct(0o700), "not mkdtemp's 0700"


def test_previous_output_of_the_same_kind_is_replaced(area):
    write(area / "out", "old")
    before = snapshot(area, skip=area / "out")
    write(area / "out", "new")
    assert value(area / "out") == "new"
    assert snapshot(area, skip=area / "out") == before and no_temporaries(area)


@pytest.mark.parametrize("extra", ["notes.txt", "sub/x"])
def test_other_folders_are_refused_without_overwrite(area, extra):
    dest = area / "out"
    write(dest, "old")
    (dest / extra).parent.mkdir(exist_ok=True)
    (dest / extra).write_text("the user's")  # an earlier output with the user's file in it
    before = snapshot(area)
    with pytest.raises(FileExistsError, match="overwrite=True") as err:
        write(dest, "new")
    assert "--overwrite" in str(err.value) and extra.split("/")[0] in str(err.value)
    assert snapshot(area) == before and no_temporaries(area)


def test_overwrite_replaces_only_the_folder(area):
    dest = area / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("x")
    before = snapshot(area, skip=dest)
    write(dest, "new", overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["data.bin", "out.json"]
    assert snapshot(area, skip=dest) == before and no_temporaries(area)


def test_files_and_links_are_never_replaced(area):
    (area / "file").write_text("a file")
    target = area / "other"
    (area / "link").symlink_to(target, target_is_directory=True)
    before = snapshot(area)
    for dest in (area / "file", area / "link"):
        with pytest.raises(FileExistsError, match="refusing"):
            write(dest, "new", overwrite=True)
    assert snapshot(area) == before and no_temporaries(area)


def test_working_directory_home_and_their_parents_are_never_replaced(area, monkeypatch):
    work = area / "home" / "user" / "project"
    work.mkdir(parents=True)
    (work / "code.py").write_text("print(1)")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(area / "home" / "user"))
    before = snapshot(area)
    for dest in (".", "", str(work), "..", str(area / "home"), "~", str(Path(area.anchor))):
        with pytest.raises(ValueError, match="refusing to replace"):
            write(Path(dest), "new", overwrite=True)
        with pytest.raises(ValueError, match="not even with overwrite"):
            check_destination(dest, KIND, overwrite=True)
    assert snapshot(area) == before


def test_a_failed_write_leaves_the_destination_as_it_was(area):
    write(area / "out", "old")
    before = snapshot(area)
    with pytest.raises(RuntimeError), atomic_folder(area / "out", KIND) as tmp:
        (tmp / "out.json").write_text("half")
        raise RuntimeError("crash while writing")
    assert snapshot(area) == before and no_temporaries(area)


def test_folder_kinds_need_their_marker():
    with pytest.raises(ValueError, match="marker"):
        FolderKind("x", "a.json", frozenset({"b.json"}))


# --- save_peft and save_checkpoint --------------------------------------------------------------


def test_save_peft_replaces_an_adapter_but_not_a_checkpoint(area, llama_generator):
    lora = llama_generator.generate(["one", "two"])
    dest = area / "adapter"
    llama_generator.save_peft(lora.select(0), dest)
    before = snapshot(area, skip=dest)
    llama_generator.save_peft(lora.select(1), dest)  # a rerun: replaced
    name = lora.module_names[0]
    assert (load_peft(dest)[0].B[name] == lora.select(1).B[name]).all()
    assert ADAPTER_FOLDER.holds(dest) and snapshot(area, skip=dest) == before

    ckpt = llama_generator.save_pretrained(area / "ckpt")
    llama_generator.save_pretrained(ckpt)  # a checkpoint replaces a checkpoint
    assert CHECKPOINT_FOLDER.holds(ckpt)
    before = snapshot(area)
    with pytest.raises(FileExistsError, match="not a PEFT adapter folder"):
        llama_generator.save_peft(lora.select(0), ckpt)
    with pytest.raises(FileExistsError, match="not a hypergen checkpoint folder"):
        llama_generator.save_pretrained(dest)
    assert snapshot(area) == before


# --- the CLI -----------------------------------------------------------------------------------


def _generate(checkpoint_dir: str, out: Path, *descriptions: str, flags=()) -> int:
    return main(["generate", "--checkpoint", checkpoint_dir, *descriptions, "-o", str(out), *flags])


def test_cli_refuses_a_foreign_folder_and_names_overwrite(area, checkpoint_dir, capsys):
    dest = area / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("x")
    before = snapshot(area)
    assert _generate(checkpoint_dir, dest, "a task") == 2
    err = capsys.readouterr().err
    assert "hypergen generate: error:" in err and "--overwrite" in err and "notes.txt" in err
    assert snapshot(area) == before
    outside = snapshot(area, skip=dest)
    assert _generate(checkpoint_dir, dest, "a task", flags=["--overwrite"]) == 0
    assert ADAPTER_FOLDER.holds(dest) and snapshot(area, skip=dest) == outside
    assert _generate(checkpoint_dir, dest, "another task") == 0, "an earlier adapter is replaced"


def test_cli_several_descriptions_keep_earlier_outputs(area, checkpoint_dir, capsys):
    many = area / "many"
    assert _generate(checkpoint_dir, many, "Count letters.", "Translate to French.") == 0
    (many / "README.txt").write_text("the user's notes")
    before = snapshot(area)
    capsys.readouterr()
    assert _generate(checkpoint_dir, many, "Add numbers.", "Sort words.") == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["000-add-numbers", "001-sort-words"]
    after = snapshot(area)
    assert {k: v for k, v in after.items() if k in before} == before, "nothing earlier changed"
    assert sorted(p.name for p in many.iterdir()) == [
        "000-add-numbers",
        "000-count-letters",
        "001-sort-words",
        "001-translate-to-french",
        "README.txt",
    ]
    # the same descriptions again: their own earlier adapters are replaced, nothing else
    assert _generate(checkpoint_dir, many, "Add numbers.", "Sort words.") == 0
    mine = ("many/000-add-numbers", "many/001-sort-words")
    kept = {k: v for k, v in after.items() if not k.startswith(mine)}
    assert {k: v for k, v in snapshot(area).items() if not k.startswith(mine)} == kept
    assert all(ADAPTER_FOLDER.holds(area / m) for m in mine)


def test_cli_one_description_into_a_folder_of_outputs_deletes_nothing(area, checkpoint_dir, capsys):
    many = area / "many"
    assert _generate(checkpoint_dir, many, "one", "two") == 0
    before = snapshot(area)
    assert _generate(checkpoint_dir, many, "three") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(area) == before


def test_cli_several_descriptions_check_every_destination_first(area, checkpoint_dir, capsys):
    many = area / "many"
    (many / "001-two").mkdir(parents=True)
    (many / "001-two" / "mine.txt").write_text("x")
    before = snapshot(area)
    assert _generate(checkpoint_dir, many, "one", "two") == 2
    assert "001-two" in capsys.readouterr().err
    assert snapshot(area) == before, "000-one was not written either"
    adapter = area / "adapter"
    assert _generate(checkpoint_dir, adapter, "one") == 0
    before = snapshot(area)
    assert _generate(checkpoint_dir, adapter, "one", "two") == 2, "an adapter holds no adapters"
    assert "adapter folder" in capsys.readouterr().err and snapshot(area) == before


def test_cli_never_replaces_the_working_directory(area, checkpoint_dir, capsys, monkeypatch):
    work = area / "project"
    work.mkdir()
    (work / "code.py").write_text("print(1)")
    monkeypatch.chdir(work)
    before = snapshot(area)
    for dest in (".", "..", str(work)):
        assert _generate(checkpoint_dir, Path(dest), "a task", flags=["--overwrite"]) == 2
        assert "refusing to replace" in capsys.readouterr().err
    assert snapshot(area) == before


def test_cli_init_checkpoint_refuses_a_foreign_folder(area, llama_dir, capsys):
    dest = area / "ckpt"
    dest.mkdir()
    (dest / "notes.txt").write_text("x")
    before = snapshot(area)
    args = [
        "init-checkpoint",
        "-o",
        str(dest),
        "--base-model",
        llama_dir,
        "--encoder-kind",
        "hashing",
        "--encoder",
        "hash-32",
        "--hidden-dim",
        "16",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "hypergen init-checkpoint: error:" in err and "--overwrite" in err
    assert snapshot(area) == before
    assert main([*args, "--overwrite"]) == 0 and CHECKPOINT_FOLDER.holds(dest)
    assert main(args) == 0, "an earlier checkpoint is replaced"


# --- the shipped default checkpoint -----------------------------------------------------------


def test_generate_defaults_to_the_shipped_checkpoint(area, checkpoint_dir, monkeypatch, capsys):
    assert (DEFAULT_CHECKPOINT / "hypernet_config.json").is_file()
    _, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    assert meta.base_model == "smollm2-135m" and not meta.untrained
    # the default is read when the command runs (a tiny one stands in for SmolLM2 + MiniLM)
    monkeypatch.setattr("hypergen.checkpoint.DEFAULT_CHECKPOINT", Path(checkpoint_dir))
    assert main(["generate", "a task", "-o", str(area / "out")]) == 0
    assert ADAPTER_FOLDER.holds(area / "out")
    monkeypatch.setattr("hypergen.checkpoint.DEFAULT_CHECKPOINT", area / "missing")
    assert main(["generate", "a task", "-o", str(area / "out2")]) == 2
    assert "pass --checkpoint" in capsys.readouterr().err and not (area / "out2").exists()


def test_atomic_write_text_replaces_whole_and_leaves_no_temporaries(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "state.json"
    atomic_write_text(target, "one\n")
    assert target.read_text() == "one\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "two\n")
    assert target.read_text() == "one\n"  # the old content, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
