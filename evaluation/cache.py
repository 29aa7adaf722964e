"""The results cache: one JSON record per computed unit, keyed by a hash of its inputs.

A record lives at ``<out>/cache/<system>/<task>.json`` (subtask "a/b" as ``a__b.json``) and holds
``key``, the sha256 of everything that determines it (``sha256_json``); a rerun reuses a record
only when the key it would compute matches (``load_cached``). Files are written atomically, so an
interrupted run never leaves half a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_json(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys; non-JSON values as ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_path(out: str | Path, system: str, task: str) -> Path:
    return Path(out) / "cache" / system / (task.replace("/", "__") + ".json")


def load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The record at ``path`` if it exists, parses and carries ``key``; else None."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return cached if isinstance(cached, dict) and cached.get("key") == key else None
