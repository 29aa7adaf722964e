"""Where hypergen keeps its files: the ``$HYPERGEN_HOME`` layout, defined once.

    $HYPERGEN_HOME (default ~/.cache/hypergen)
        data/bigbench/   task files (`make data`)
        loras/           the LoRA library: <task>/ PEFT folders (subtask a/b as a__b), _multitask/
        models/<name>/   built-in base models converted from their package's GGUF file
        runs/<name>/     training run folders

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


def suite_dir(explicit: str | Path | None = None) -> Path:
    """The BIG-bench-format task suite."""
    return _or(explicit, "data", "bigbench")


def library_dir(explicit: str | Path | None = None) -> Path:
    """The LoRA library."""
    return _or(explicit, "loras")


def run_dir(name: str, explicit: str | Path | None = None) -> Path:
    """A training run's folder."""
    return _or(explicit, "runs", name)


def model_cache_dir(name: str) -> Path:
    """Where a built-in base model is converted to."""
    return hypergen_home() / "models" / name
