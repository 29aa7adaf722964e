"""The results cache: one JSON record per computed unit, keyed by a hash of its inputs.

A record lives at ``<out>/cache/<system>/<task>.json`` (subtask "a/b" as ``a__b.json``) and holds
``key``, the sha256 of everything that determines it (``sha256_json``); a rerun reuses a record
only when the key it would compute matches (``load_cached``). Files are written atomically, so an
interrupted run never leaves half a record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypergen.atomic import atomic_write_text
from hypergen.layout import portable_path, task_slug

# Results record paths under the repository (or the installed packages' folder) relative to it,
# and cache paths as $HYPERGEN_HOME/...: ``record_path``.
REPO = Path(__file__).resolve().parents[1]


def record_path(path: str | Path) -> str:
    """``path`` as results record it (``hypergen.layout.portable_path`` against ``REPO``)."""
    return portable_path(path, REPO)


def write_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file."""
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def cache_path(out: str | Path, system: str, task: str) -> Path:
    return Path(out) / "cache" / system / (task_slug(task) + ".json")


def load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The record at ``path`` if it exists, parses and carries ``key``; else None."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return cached if isinstance(cached, dict) and cached.get("key") == key else None
