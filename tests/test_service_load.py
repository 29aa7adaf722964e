"""Under load (issue 10, item 7): cheap routes never queue behind completions, and a completion
that would wait in the queue longer than ``MAX_QUEUE_WAIT_S`` is refused with 503 + Retry-After.

Deterministic: the engine is made to block until the test releases it, so "under load" is a
state the test sets up, not a timing race."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from hypergen.decoding import Completion, Job, SamplingParams
from service.batcher import Batcher, Overloaded
from service.server import BackgroundServer, LaneDispatcher
from tests.conftest import patch_decoders


@pytest.fixture
def blocked(engine, monkeypatch):
    """The engine's forward passes wait for ``release``; ``started`` is set when the first one
    begins (in either batching mode)."""
    started, release = threading.Event(), threading.Event()

    def wait_for_release(forward):
        def blocked_forward(*args):
            started.set()
            assert release.wait(60), "the test never released the engine"
            return forward(*args)

        return blocked_forward

    patch_decoders(monkeypatch, engine, forward=wait_for_release)
    yield started, release
    release.set()


def _get(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, bytes, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_cheap_routes_do_not_queue_behind_completions(make_app, engine, blocked, batching):
    started, release = blocked
    app = make_app(THREADS=6, RESERVED_THREADS=2, MAX_BATCH=1, BATCHING=batching)
    server = BackgroundServer(app)
    try:
        status, body, _ = _get(f"{server.url}/v1/adapters", {"description": "cheap routes"})
        assert status == 201
        adapter_id = json.loads(body)["id"]
        completion = {"model": "base", "prompt": "hi", "max_tokens": 2}
        with ThreadPoolExecutor(16) as pool:
            # more completions than threads: before lanes, every thread waited in one of them
            busy = [
                pool.submit(_get, f"{server.url}/v1/completions", completion) for _ in range(16)
            ]
            assert started.wait(30)
            runtime = app.extensions["hypergen"]
            deadline = time.monotonic() + 30
            while runtime.batcher.waiting < 3 and time.monotonic() < deadline:
                time.sleep(0.01)  # the completion lane is full: 1 running, 3 queued
            time.sleep(0.2)
            for path in (
                "/healthz",
                "/metrics",
                "/v1/adapters",
                f"/v1/adapters/{adapter_id}",
                f"/v1/adapters/{adapter_id}/download",
                "/v1/models",
            ):
                status, _, _ = _get(f"{server.url}{path}", timeout=5)  # the engine is still blocked
                assert status == 200, path
            assert not release.is_set() and not any(f.done() for f in busy)
            release.set()
            assert [f.result()[0] for f in busy] == [200] * 16
    finally:
        server.stop()


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_a_completion_waiting_past_the_limit_is_503_with_retry_after(make_app, blocked, batching):
    started, release = blocked
    client = make_app(
        MAX_BATCH=1, MAX_QUEUE_WAIT_S=0.3, REQUEST_TIMEOUT_S=30, BATCHING=batching
    ).test_client()
    body = {"model": "base", "prompt": "hi", "max_tokens": 2}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/completions", json=body)
        assert started.wait(30)
        waited = client.post("/v1/completions", json=body)  # queued behind a batch that never ends
        assert waited.status_code == 503, waited.json
        assert waited.json["error"]["code"] == "overloaded"
        assert "waited" in waited.json["error"]["message"]
        assert int(waited.headers["Retry-After"]) >= 1
        release.set()
        assert first.result().status_code == 200
    assert client.post("/v1/completions", json=body).status_code == 200, "the queue recovers"


def _job() -> Job:
    return Job([1, 2], None, SamplingParams(max_tokens=1))


def test_a_request_that_would_wait_too_long_is_refused_at_once():
    release = threading.Event()

    def run(jobs):
        release.wait(30)
        return [Completion("", [], "stop", 2) for _ in jobs]

    batcher = Batcher(run, max_batch=2, window_s=0.0, max_queue_wait_s=5.0)
    try:
        batcher.batch_seconds = 2.0  # what the last batches took
        running = batcher.submit([_job()])
        deadline = time.monotonic() + 10
        while not running[0].running() and time.monotonic() < deadline:
            time.sleep(0.005)
        queued = batcher.submit([_job(), _job()])  # starts after the running batch: ~2 s
        assert batcher.estimated_wait(0) == pytest.approx(2.0)
        assert batcher.estimated_wait(2) == pytest.approx(4.0)
        queued += batcher.submit([_job()])  # behind 1 running + 1 full batch: ~4 s, admitted
        with pytest.raises(Overloaded, match="would wait") as err:
            batcher.submit([_job(), _job()])  # its last job: 1 running + 2 batches: ~6 s > 5 s
        assert err.value.retry_after == pytest.approx(6.0)
        with pytest.raises(Overloaded):
            batcher.submit([_job()], waited_s=4.5)  # time already spent waiting counts
        release.set()
        for future in [*running, *queued]:
            assert isinstance(future, Future) and future.result(10).finish_reason == "stop"
    finally:
        release.set()
        batcher.close()


def test_lane_dispatcher_keeps_threads_for_cheap_requests():
    class Task:
        def __init__(self, heavy: bool, gate: threading.Event | None = None):
            self.heavy, self.gate, self.done = heavy, gate, threading.Event()

        def service(self):
            if self.gate is not None:
                self.gate.wait(30)
            self.done.set()

        def cancel(self):
            pass

    gate = threading.Event()
    dispatcher = LaneDispatcher(reserved=1, is_heavy=lambda task: task.heavy)
    dispatcher.set_thread_count(3)
    try:
        heavy = [Task(True, gate) for _ in range(5)]
        for task in heavy:
            dispatcher.add_task(task)
        cheap = Task(False)
        dispatcher.add_task(cheap)
        assert cheap.done.wait(5), "a cheap task runs while every heavy one waits"
        assert sum(t.done.is_set() for t in heavy) == 0
        gate.set()
        assert all(t.done.wait(5) for t in heavy)
    finally:
        gate.set()
        dispatcher.shutdown()
