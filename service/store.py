"""Content-addressed adapter store: PEFT folders on disk, an SQLite index, an LRU of hot tensors.

Layout under ``root``::

    index.sqlite3              one row per adapter: id, created, metadata (JSON)
    adapters/<id>/             a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)

The id is a content hash (``Engine.adapter_id``), so a folder never changes once written. A write
puts the folder in place atomically (temporary folder + rename, ``hypergen.adapters.export.save_peft``) and
then inserts the row; a delete removes the row and then the folder. The rows are the truth: a
folder without a row (a crash between the two steps) is invisible and is overwritten by the next
write of that id, and ``open`` drops rows whose folder has gone and sweeps stale leftovers. Only
safetensors are read; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypergen.adapters.export import load_peft
from hypergen.adapters.lora import LoraWeights

logger = logging.getLogger(__name__)

ADAPTER_ID = re.compile(r"^[0-9a-f]{64}$")
SCHEMA_VERSION = 1
STALE_AFTER_S = 3600.0  # leftovers younger than this may belong to a writer in another process


def valid_id(adapter_id: str) -> bool:
    """Ids are exactly 64 lowercase hex digits: nothing else ever reaches the file system."""
    return isinstance(adapter_id, str) and bool(ADAPTER_ID.match(adapter_id))


class LRUCache:
    """A bounded, thread-safe map of the most recently used adapters' tensors."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"LRUCache.capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, LoraWeights] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> LoraWeights | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: LoraWeights) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class AdapterStore:
    """Adapters by id: metadata, PEFT folders and (hot) tensors.

    Args:
        root: the store's folder (created if missing).
        cache_size: how many adapters' tensors to keep in memory.
    """

    def __init__(self, root: str | Path, cache_size: int = 64):
        self.root = Path(root)
        self.folders = self.root / "adapters"
        self.folders.mkdir(parents=True, exist_ok=True)
        self.cache = LRUCache(cache_size)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.root / "index.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS adapters (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS adapters_created ON adapters (created)")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._reconcile()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _reconcile(self) -> None:
        """Make the index and the folders agree after a crash or a restart."""
        with self._lock:
            ids = [row[0] for row in self._db.execute("SELECT id FROM adapters")]
            gone = [i for i in ids if not (self.folders / i).is_dir()]
            for adapter_id in gone:
                self._db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
            if gone:
                logger.warning("store: dropped %d index rows whose folders are missing", len(gone))
            known = set(ids) - set(gone)
            now = time.time()
            for path in self.folders.iterdir():
                if path.name in known or now - path.stat().st_mtime < STALE_AFTER_S:
                    continue
                logger.warning("store: removing leftover %s", path.name)
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                    missing_ok=True
                )

    def folder(self, adapter_id: str) -> Path:
        assert valid_id(adapter_id), f"invalid adapter id {adapter_id!r}"
        return self.folders / adapter_id

    def get(self, adapter_id: str) -> dict[str, Any] | None:
        """The adapter's metadata, or None."""
        if not valid_id(adapter_id):
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM adapters WHERE id = ?", (adapter_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(
        self, adapter_id: str, record: dict[str, Any], write: Callable[[Path], Any]
    ) -> tuple[dict[str, Any], bool]:
        """Store an adapter unless it is there already.

        Args:
            adapter_id: its content hash.
            record: JSON metadata; ``id``, ``created`` and ``size_bytes`` are filled in.
            write: writes the PEFT folder at the path it is given, atomically.

        Returns:
            (the stored record, whether it was created now).
        """
        folder = self.folder(adapter_id)
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM adapters WHERE id = ?", (adapter_id,)
            ).fetchone()
            if row:
                return json.loads(row[0]), False
            write(folder)  # replaces any leftover folder of this id
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            record = {**record, "id": adapter_id, "created": int(time.time()), "size_bytes": size}
            self._db.execute(
                "INSERT INTO adapters (id, created, record) VALUES (?, ?, ?)",
                (adapter_id, time.time(), json.dumps(record)),
            )
        return record, True

    def list(self, limit: int = 20, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Newest first: (records, total count)."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM adapters").fetchone()[0]
            rows = self._db.execute(
                "SELECT record FROM adapters ORDER BY created DESC, id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [json.loads(r[0]) for r in rows], total

    def delete(self, adapter_id: str) -> bool:
        """Remove an adapter; False if there was none."""
        if not valid_id(adapter_id):
            return False
        folder = self.folder(adapter_id)
        with self._lock:
            deleted = (
                self._db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,)).rowcount > 0
            )
            if deleted and folder.is_dir():
                # rename first so no reader ever sees a half-deleted folder
                trash = Path(
                    tempfile.mkdtemp(prefix=f".deleted-{adapter_id[:12]}.", dir=self.folders)
                )
                os.replace(folder, trash / adapter_id)
                shutil.rmtree(trash, ignore_errors=True)
        self.cache.pop(adapter_id)
        return deleted

    def weights(self, adapter_id: str) -> tuple[LoraWeights | None, str]:
        """The adapter's tensors and where they came from: ``memory``, ``disk`` (then kept in
        memory) or ``missing`` (None)."""
        lora = self.cache.get(adapter_id)
        if lora is not None:
            return lora, "memory"
        if self.get(adapter_id) is None:
            return None, "missing"
        try:
            lora, _ = load_peft(self.folder(adapter_id))
        except FileNotFoundError:  # deleted meanwhile
            return None, "missing"
        self.cache.put(adapter_id, lora)
        return lora, "disk"

    def zip_bytes(self, adapter_id: str) -> bytes:
        """The PEFT folder as a zip (files at the top level: unzip into a folder and load it)."""
        folder = self.folder(adapter_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    archive.write(path, arcname=path.name)
        return buffer.getvalue()
