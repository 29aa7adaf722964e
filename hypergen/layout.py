"""Where hypergen keeps its files: the ``$HYPERGEN_HOME`` layout, defined once.

    $HYPERGEN_HOME (default ~/.cache/hypergen)
        data/bigbench/   task files (`make data`)
        loras/           the LoRA library: <task>/ PEFT folders (subtask a/b as a__b), _multitask/
        models/<name>/   built-in base models converted from their package's GGUF file
        runs/<name>/     training run folders
        store/           the service's adapter store (PEFT folders + SQLite index)
        checkpoints/<name>/  checkpoints built on demand (the untrained fallback of the service)

Every function takes the user's explicit choice first and falls back to the layout.
"""

from __future__ import annotations

import os
from pathlib import Path


def hypergen_home() -> Path:
    """Cache root: ``$HYPERGEN_HOME`` or ``~/.cache/hypergen``."""
    return Path(os.environ.get("HYPERGEN_HOME", Path.home() / ".cache" / "hypergen"))


def _or(explicit: str | Path | None, *default: str) -> Path:
    return Path(explicit) if explicit else hypergen_home().joinpath(*default)


SUITE = ("data", "bigbench")  # the suite's place under a home (see ``suite_dir``)


def suite_dir(explicit: str | Path | None = None, home: str | Path | None = None) -> Path:
    """The BIG-bench-format task suite (under ``home`` when given, else the usual home)."""
    if home is not None and not explicit:
        return Path(home).joinpath(*SUITE)
    return _or(explicit, *SUITE)


def library_dir(explicit: str | Path | None = None) -> Path:
    """The LoRA library."""
    return _or(explicit, "loras")


MULTITASK = "_multitask"  # the library's multi-task LoRA (a folder name no task can have)


def task_slug(task: str) -> str:
    """A task name as one path component: subtask ``a/b`` -> ``a__b``."""
    return task.replace("/", "__")


def library_folder(library: str | Path, task: str) -> Path:
    """The PEFT folder of ``task``'s LoRA (or of ``MULTITASK``) in a library."""
    return Path(library) / task_slug(task)


def run_dir(name: str, explicit: str | Path | None = None) -> Path:
    """A training run's folder."""
    return _or(explicit, "runs", name)


def store_dir(explicit: str | Path | None = None) -> Path:
    """The service's adapter store."""
    return _or(explicit, "store")


def checkpoint_cache_dir(name: str, home: str | Path | None = None) -> Path:
    """Where a checkpoint built on demand is kept."""
    return Path(home or hypergen_home()) / "checkpoints" / name


def model_cache_dir(name: str) -> Path:
    """Where a built-in base model is converted to."""
    return hypergen_home() / "models" / name


def portable_path(path: str | Path, repo: str | Path | None = None) -> str:
    """``path`` as a results file should record it: ``$HYPERGEN_HOME/...`` when it lies under the
    home, relative to ``repo`` when it lies under that, else as given. An absolute path of one
    machine's cache means nothing on another.
    """
    full = Path(os.path.abspath(os.path.expanduser(path)))
    for root, label in ((hypergen_home(), "$HYPERGEN_HOME"), (repo, None)):
        if root is None:
            continue
        root = Path(os.path.abspath(os.path.expanduser(root)))
        if full == root or root in full.parents:
            relative = full.relative_to(root).as_posix()
            if label is None:
                return relative
            return label if relative == "." else f"{label}/{relative}"
    return str(path)
