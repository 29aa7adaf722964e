"""SHA-256 digests of files, bytes and JSON-able data: what checkpoints, results caches and
bundles are identified by."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20  # read files in 1 MiB pieces: weights files need not fit in memory twice


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return files_sha256([path])


def files_sha256(paths: list[str | Path]) -> str:
    """Hex SHA-256 of the files' bytes, one after the other (in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(data: Any) -> str:
    """Hex SHA-256 of ``data`` as canonical JSON (sorted keys; non-JSON values as ``str``)."""
    return sha256_bytes(json.dumps(data, sort_keys=True, default=str).encode())
