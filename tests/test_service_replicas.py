"""Replicas sharing one adapter store (issue 10, items 8-10): creation is idempotent across
processes, a download is the complete adapter or an error, a deletion is seen by every replica
before its next use, and the temporary folders of writers killed with -9 are swept (never a live
writer's). Unit tests use two ``AdapterStore`` objects on one folder (two connections, as two
processes have); the last test starts two real ``hypergen serve`` processes on one store."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from safetensors.torch import load as load_safetensors

from service.store import AdapterStore, writer_tag

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"adapter_config.json", "adapter_model.safetensors"}


@pytest.fixture
def lora(engine):
    return engine.make_adapters(["replicas"])[0]


def _writer(engine, lora, delay: float = 0.0):
    def write(folder: Path):
        time.sleep(delay)
        return engine.save_adapter(lora, folder, "float32", {})

    return write


def _check_zip(data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert set(archive.namelist()) == REQUIRED, archive.namelist()
        json.loads(archive.read("adapter_config.json"))
        assert load_safetensors(archive.read("adapter_model.safetensors")), "no tensors"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "adapters").iterdir() if p.name.startswith("."))


def test_two_stores_create_the_same_adapter_at_once(tmp_path, engine, lora):
    """Two writers of one id (two replicas): both succeed, exactly one creates, no leftovers."""
    a, b = AdapterStore(tmp_path / "s"), AdapterStore(tmp_path / "s")
    try:
        for round_ in range(6):
            adapter_id = f"{round_:064x}"
            barrier = threading.Barrier(2)

            def put(store, adapter_id=adapter_id, barrier=barrier):
                barrier.wait()
                return store.put(adapter_id, {"n": 1}, _writer(engine, lora, delay=0.01))

            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(put, (a, b)))
            assert sorted(created for _, created in results) == [False, True]
            assert results[0][0]["id"] == results[1][0]["id"] == adapter_id
            _check_zip(a.zip_bytes(adapter_id))
        assert a.list()[1] == b.list()[1] == 6
        assert _leftovers(tmp_path / "s") == []
    finally:
        a.close()
        b.close()


def _stored(root: Path, engine, lora) -> tuple[AdapterStore, str]:
    """A store at ``root`` holding one adapter, and its id."""
    store, adapter_id = AdapterStore(root), "c" * 64
    store.put(adapter_id, {}, _writer(engine, lora))
    return store, adapter_id


def test_a_folder_left_by_a_crash_after_the_rename_is_reused_or_replaced(tmp_path, engine, lora):
    store, adapter_id = _stored(tmp_path / "s", engine, lora)
    store._db.execute("DELETE FROM adapters")  # the row was never committed: a folder, no row
    record, created = store.put(adapter_id, {"again": True}, _writer(engine, lora))
    assert created and record["again"] and store.get(adapter_id) is not None
    _check_zip(store.zip_bytes(adapter_id))
    store.close()


def test_a_deletion_is_seen_by_the_other_replica_before_its_next_use(tmp_path, engine, lora):
    a, adapter_id = _stored(tmp_path / "s", engine, lora)
    b = AdapterStore(tmp_path / "s")
    assert a.weights(adapter_id)[1] == "disk" and a.weights(adapter_id)[1] == "memory"
    assert b.delete(adapter_id)
    assert a.weights(adapter_id) == (None, "missing"), "A's memory must not outlive the row"
    assert len(a.cache) == 0
    a.close()
    b.close()


def test_a_download_is_the_complete_adapter_or_an_error(tmp_path, engine, lora):
    store, adapter_id = _stored(tmp_path / "s", engine, lora)
    _check_zip(store.zip_bytes(adapter_id))
    # what a reader sees half-way through another replica's delete: a folder losing its files
    (store.folder(adapter_id) / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        store.zip_bytes(adapter_id)
    store.close()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    root = tmp_path / "s"
    AdapterStore(root).close()
    folders = root / "adapters"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = folders / f".tmp.{writer_tag(sleeper.pid)}.live"
        dead = folders / f".tmp.{writer_tag(_dead_pid(), start='1')}.dead"
        reused = folders / f".tmp.{writer_tag(sleeper.pid, start='1')}.reused"  # pid reused
        mine = folders / f".tmp.{writer_tag(os.getpid())}.mine"
        for folder in (live, dead, reused, mine):
            (folder / "x").mkdir(parents=True)
        store = AdapterStore(root)  # swept at start
        assert _leftovers(root) == sorted([live.name, mine.name])
        # and periodically: once the live writer has died, the next write sweeps its folder
        sleeper.kill()
        sleeper.wait()
        store.sweep_interval_s = 0.0
        store.delete("0" * 64)
        assert _leftovers(root) == [mine.name]
        store.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def _kill_9_writer(root: Path, adapter_id: str, mid_write: bool, check=None) -> None:
    """A process stores an adapter in ``root`` and gets SIGKILL: half-way through writing its
    folder (``mid_write``) or once ``put`` has returned; ``check()`` runs just before the kill."""
    wait = 'print("ready", flush=True); time.sleep(60)'
    script = textwrap.dedent(
        f"""
        import time
        from service.store import AdapterStore
        def write(folder):
            folder.mkdir(parents=True)
            (folder / "adapter_config.json").write_text("{{}}")
            {wait if mid_write else "pass"}
        AdapterStore({str(root)!r}).put({adapter_id!r}, {{"object": "adapter"}}, write)
        {"pass" if mid_write else wait}
        """
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        if check is not None:
            check()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()


def test_a_write_cut_by_kill_9_is_swept_at_the_next_start(tmp_path, checkpoint_dir):
    root = tmp_path / "s"

    def one_leftover():
        assert len(_leftovers(root)) == 1

    _kill_9_writer(root, "a" * 64, mid_write=True, check=one_leftover)
    store = AdapterStore(root)
    assert _leftovers(root) == [] and store.get("a" * 64) is None
    store.close()


def test_an_acknowledged_write_survives_kill_9(tmp_path):
    """Commits are not fsynced (``PRAGMA synchronous=NORMAL``): they survive the process being
    killed right after ``put`` returned, which is what a replica's crash is."""
    root = tmp_path / "s"
    _kill_9_writer(root, "b" * 64, mid_write=False)
    store = AdapterStore(root)
    assert store.get("b" * 64)["object"] == "adapter"
    assert (store.folder("b" * 64) / "adapter_config.json").is_file()
    store.close()


# --- two real server processes on one store ------------------------------------------------------


def _start_server(checkpoint: str, store: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.server", "--checkpoint", checkpoint, "--store", str(store)]
        + ["--port", "0", "--threads", "16", "--torch-threads", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process


def _wait_url(process: subprocess.Popen) -> str:
    line = process.stdout.readline()  # "hypergen: serving ... on http://127.0.0.1:PORT/"
    match = re.search(r"on (http://\S+)/$", line.strip())
    if not match:
        process.kill()
        raise AssertionError(f"server did not start: {line!r} {process.stderr.read()}")
    return match.group(1)


def _call(method: str, url: str, body: dict | None = None) -> tuple[int, bytes, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_two_server_processes_on_one_store(tmp_path, checkpoint_dir):
    store = tmp_path / "store"
    processes = [_start_server(checkpoint_dir, store) for _ in range(2)]
    try:
        a, b = (_wait_url(p) for p in processes)

        # 1. the same description to both at once: both answer, one creates, the ids agree
        for i in range(8):
            barrier = threading.Barrier(2)

            def create(url, i=i, barrier=barrier):
                barrier.wait()
                return _call("POST", f"{url}/v1/adapters", {"description": f"task {i}"})

            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(create, (a, b)))
            assert sorted(status for status, _, _ in answers) == [200, 201], answers
            assert len({json.loads(body)["id"] for _, body, _ in answers}) == 1

        # 2. mixed traffic: downloads on both while B deletes and A re-creates
        ids = [
            json.loads(_call("POST", f"{a}/v1/adapters", {"description": f"task {i}"})[1])["id"]
            for i in range(8)
        ]

        def download(k: int):
            status, body, kind = _call("GET", f"{(a, b)[k % 2]}/v1/adapters/{ids[k % 8]}/download")
            assert status in (200, 404), (status, body)
            if status == 200:
                assert kind == "application/zip"
                _check_zip(body)
            return status

        def churn(k: int):
            status, body, _ = _call("DELETE", f"{b}/v1/adapters/{ids[k % 8]}")
            assert status in (200, 404), (status, body)
            status, body, _ = _call("POST", f"{a}/v1/adapters", {"description": f"task {k % 8}"})
            assert status in (200, 201), (status, body)

        with ThreadPoolExecutor(12) as pool:
            downloads = [pool.submit(download, k) for k in range(160)]
            churns = [pool.submit(churn, k) for k in range(24)]
            statuses = [f.result() for f in downloads]
            for f in churns:
                f.result()
        assert statuses.count(200) > 0

        # 3. deleted on B, gone on A too, even from A's memory
        status, body, _ = _call("POST", f"{a}/v1/adapters", {"description": "short-lived"})
        assert status == 201, body
        adapter_id = json.loads(body)["id"]
        completion = {"model": adapter_id, "prompt": "hi", "max_tokens": 2}
        assert _call("POST", f"{a}/v1/completions", completion)[0] == 200  # now in A's memory
        assert _call("DELETE", f"{b}/v1/adapters/{adapter_id}")[0] == 200
        assert _call("GET", f"{a}/v1/adapters/{adapter_id}")[0] == 404
        assert _call("POST", f"{a}/v1/completions", completion)[0] == 404
        assert _leftovers(store) == []
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
