"""Content-addressed adapter store: adapter folders on disk, an SQLite index, an LRU of hot tensors.

Layout under ``root``::

    index.sqlite3              one row per adapter: id, created, metadata (JSON)
    adapters/<id>/             a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)
                               or an AdapterHub bottleneck folder (adapter_config.json +
                               adapter.safetensors): ``FORMATS``, told apart by the weights file
    adapters/.tmp.<writer>.*   a write or delete in progress (<writer>: host.pid.start-time)

Several processes (replicas behind a load balancer) may share one store. The id is a content hash
(``Engine.adapter_id``), so a folder never changes once in place; it appears and disappears only
by ``rename``, so a reader sees the whole folder or none. A write builds the folder in a temporary
folder of its own, then, inside one SQLite write transaction (``BEGIN IMMEDIATE``: one writer at a
time across processes, others wait up to ``BUSY_TIMEOUT_S``), renames it into place and inserts
the row; a writer that finds the row there already keeps the existing adapter. A delete removes
the row and renames the folder away in one such transaction. So the rows are the truth and never
disagree with the folders for longer than a transaction, and creation is idempotent.

Every read of an adapter checks its row first (a primary-key lookup, microseconds), so an adapter
deleted through another replica is not served from this one's memory. Temporary folders name
their writer; those of writers that died (kill -9) are swept at open and then at most every
``sweep_interval_s`` seconds on a write or delete, never those of a live writer (another host's
only after ``STALE_AFTER_S``). Only safetensors are read; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from hypergen.adapters import adapterhub, export
from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights

logger = logging.getLogger(__name__)

ADAPTER_ID = re.compile(r"^[0-9a-f]{64}$")
Weights = LoraWeights | BottleneckWeights
# the folder formats, told apart by their weights file: (config, weights) file names (what a
# folder holds, and a download) and the reader (safetensors only)
FORMATS: dict[str, tuple[tuple[str, str], Callable[[Path], tuple[Weights, dict]]]] = {
    "peft-lora": ((export.CONFIG_NAME, export.WEIGHTS_NAME), export.load_peft),
    "adapterhub": ((adapterhub.CONFIG_NAME, adapterhub.WEIGHTS_NAME), adapterhub.load_adapterhub),
}
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's write transaction
SWEEP_INTERVAL_S = 600.0
STALE_AFTER_S = 3600.0  # leftovers whose writer cannot be checked (another host, an old name)
_TEMP = re.compile(r"^\.tmp\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.(?P<start>[0-9]+)\.")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, /proc/<pid>/stat field 22), or None
    if it is not running or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command name, which may hold spaces


def writer_tag(pid: int | None = None, start: str | None = None) -> str:
    """``host.pid.start-time`` of a writer (default: this process), as temporary folders name
    it: a sweeper tells a dead writer from a live one, and from a new process with the same pid."""
    pid = os.getpid() if pid is None else pid
    return f"{_host()}.{pid}.{start or _start_time(pid) or 0}"


def _writer_alive(host: str, pid: int, start: str) -> bool | None:
    """Whether the writer that named a temporary folder still runs; None if this process cannot
    tell (another host)."""
    if host != _host():
        return None
    if Path("/proc/self/stat").is_file():
        return _start_time(pid) == start
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def valid_id(adapter_id: str) -> bool:
    """Ids are exactly 64 lowercase hex digits: nothing else ever reaches the file system."""
    return isinstance(adapter_id, str) and bool(ADAPTER_ID.match(adapter_id))


class LRUCache:
    """A bounded, thread-safe map of the most recently used adapters' tensors."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"LRUCache.capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, Weights] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Weights | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: Weights) -> None:
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
    """Adapters by id: metadata, adapter folders and (hot) tensors; safe to share between processes.

    Args:
        root: the store's folder (created if missing).
        cache_size: how many adapters' tensors to keep in memory.
        sweep_interval_s: the least time between two sweeps of dead writers' leftovers.
    """

    def __init__(
        self, root: str | Path, cache_size: int = 64, sweep_interval_s: float = SWEEP_INTERVAL_S
    ):
        self.root = Path(root)
        self.folders = self.root / "adapters"
        self.folders.mkdir(parents=True, exist_ok=True)
        self.cache = LRUCache(cache_size)
        self.sweep_interval_s = sweep_interval_s
        self._last_sweep = 0.0
        self._lock = threading.Lock()  # one connection, shared by this process's threads
        self._db = sqlite3.connect(
            self.root / "index.sqlite3",
            check_same_thread=False,
            isolation_level=None,  # autocommit; writes open their own transactions
            timeout=BUSY_TIMEOUT_S,
        )
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        # Commits survive the process being killed, not a power cut (the adapter folders are not
        # fsynced either; an adapter lost that way is made again): no fsync on every commit, which
        # took 1-7 ms of a new adapter's first request here.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS adapters (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS adapters_created ON adapters (created)")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.sweep()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: one at a time across every process using the store."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _temp(self) -> Path:
        """A fresh temporary folder of this process's (swept once it has died)."""
        return Path(tempfile.mkdtemp(prefix=f".tmp.{writer_tag()}.", dir=self.folders))

    def sweep(self) -> None:
        """Make the index and the folders agree, and remove what dead writers left behind."""
        self._last_sweep = time.monotonic()
        trash, leftovers = None, []
        with self._transaction() as db:  # no other writer is half-way: every folder is settled
            ids = {row[0] for row in db.execute("SELECT id FROM adapters")}
            gone = [i for i in ids if not (self.folders / i).is_dir()]
            for adapter_id in gone:
                db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
            if gone:
                logger.warning("store: dropped %d index rows whose folders are missing", len(gone))
            for path in self.folders.iterdir():
                if path.name in ids:
                    continue
                if valid_id(path.name):  # renamed in place by a writer killed before its commit
                    trash = trash or self._temp()
                    os.replace(path, trash / path.name)  # inside the lock: no writer may reuse it
                elif self._stale(path):
                    leftovers.append(path)
        for path in leftovers + ([trash] if trash else []):
            logger.warning("store: removing leftover %s", path.name)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _stale(self, path: Path) -> bool:
        match = _TEMP.match(path.name)
        if match:
            alive = _writer_alive(match["host"], int(match["pid"]), match["start"])
            if alive is not None:
                return not alive
        try:
            return time.time() - path.lstat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return False

    def _maybe_sweep(self) -> None:
        if time.monotonic() - self._last_sweep < self.sweep_interval_s:
            return
        try:
            self.sweep()
        except (OSError, sqlite3.Error) as err:  # housekeeping must not fail the request
            logger.warning("store: sweep failed: %s", err)

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

    def exists(self, adapter_id: str) -> bool:
        """Whether the index holds the adapter (a primary-key lookup, no JSON)."""
        if not valid_id(adapter_id):
            return False
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
                is not None
            )

    def put(
        self, adapter_id: str, record: dict[str, Any], write: Callable[[Path], Any]
    ) -> tuple[dict[str, Any], bool]:
        """Store an adapter unless it is there already (idempotent, also across processes).

        Args:
            adapter_id: its content hash.
            record: JSON metadata; ``id``, ``created`` and ``size_bytes`` are filled in.
            write: writes the adapter folder at the path it is given (a temporary one).

        Returns:
            (the stored record, whether it was created now).
        """
        folder = self.folder(adapter_id)
        existing = self.get(adapter_id)
        if existing is not None:
            return existing, False
        staging = self._temp()
        try:
            write(staging / adapter_id)
            size = sum(p.stat().st_size for p in (staging / adapter_id).iterdir() if p.is_file())
            record = {**record, "id": adapter_id, "created": int(time.time()), "size_bytes": size}
            with self._transaction() as db:
                row = db.execute(
                    "SELECT record FROM adapters WHERE id = ?", (adapter_id,)
                ).fetchone()
                if row:  # another writer (thread or replica) was first: keep its adapter
                    return json.loads(row[0]), False
                if folder.exists():  # a folder without a row: a writer died before its commit
                    os.replace(folder, staging / "replaced")
                os.replace(staging / adapter_id, folder)
                db.execute(
                    "INSERT INTO adapters (id, created, record) VALUES (?, ?, ?)",
                    (adapter_id, time.time(), json.dumps(record)),
                )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._maybe_sweep()
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
        folder, trash = self.folder(adapter_id), None
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,)).rowcount > 0
            if deleted and folder.is_dir():
                trash = self._temp()  # renamed away whole: no reader sees a half-deleted folder
                os.replace(folder, trash / adapter_id)
        self.cache.pop(adapter_id)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        self._maybe_sweep()
        return deleted

    def weights(self, adapter_id: str) -> tuple[Weights | None, str]:
        """The adapter's tensors and where they came from: ``memory``, ``disk`` (then kept in
        memory) or ``missing`` (None). The index is asked first, even for tensors in memory, so
        an adapter deleted through another replica is not used here either."""
        if not self.exists(adapter_id):
            self.cache.pop(adapter_id)
            return None, "missing"
        lora = self.cache.get(adapter_id)
        if lora is not None:
            return lora, "memory"
        try:
            lora = read_folder(self.folder(adapter_id))
        except FileNotFoundError:  # deleted meanwhile
            return None, "missing"
        self.cache.put(adapter_id, lora)
        return lora, "disk"

    def zip_bytes(self, adapter_id: str) -> bytes:
        """The adapter folder as a zip (files at the top level: unzip into a folder and load it
        with PEFT or AdapterHub, as its format says).

        Raises FileNotFoundError unless every file is there: the files are all opened before any
        is read, and a folder never changes once in place, so the zip holds one complete adapter
        even if the adapter is deleted meanwhile (an open file stays readable).
        """
        folder = self.folder(adapter_id)
        buffer = io.BytesIO()
        with ExitStack() as stack:
            names, _ = FORMATS[folder_format(folder)]
            files = [stack.enter_context(open(folder / name, "rb")) for name in names]
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
                for name, file in zip(names, files):
                    archive.writestr(name, file.read())
        return buffer.getvalue()


def folder_format(folder: Path) -> str:
    """The format (a key of ``FORMATS``) of an adapter folder, by its weights file.

    Raises:
        FileNotFoundError: the folder holds neither weights file (it was deleted meanwhile).
    """
    for name, ((_, weights), _) in FORMATS.items():
        if (folder / weights).is_file():
            return name
    raise FileNotFoundError(f"{folder} holds no adapter weights")


def read_folder(folder: Path) -> Weights:
    """An adapter folder's tensors, read with its format's loader (safetensors only)."""
    _, load = FORMATS[folder_format(folder)]
    return load(folder)[0]
