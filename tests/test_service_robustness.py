"""One bad request never hurts another (issue 10, items 1-6): sampling parameters at the edges,
a failing row inside a batch, invalid Unicode, deep JSON, Unicode digits in paging, non-JSON
answers, and idle connections against a real waitress server (127.0.0.1 only, bounded)."""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from hypergen import decoding
from hypergen.decoding import Completion, Job, SamplingParams
from service.batcher import Batcher
from service.server import BackgroundServer
from tests.conftest import patch_decoders

ROUTES = ("/v1/adapters", "/v1/completions", "/v1/chat/completions")


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def _error(response, status: int, pattern: str = "") -> dict:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.is_json, response.data[:200]
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert pattern.lower() in error["message"].lower(), error["message"]
    return error


# --- 1. sampling parameters and per-row isolation --------------------------------------------------


def test_tiny_temperatures_decode_greedily(client):
    """1e-300, 1e-45 and 5e-324 used to overflow the softmax (500 for the whole batch); below
    GREEDY_BELOW a temperature decodes greedily."""
    body = {"model": "base", "prompt": "The cat sits", "max_tokens": 6, "seed": 3}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0})
    assert greedy.status_code == 200
    for temperature in (1e-300, 1e-45, 5e-324, 1e-7):
        response = client.post("/v1/completions", json={**body, "temperature": temperature})
        assert response.status_code == 200, (temperature, response.data[:300])
        assert response.json["choices"][0]["text"] == greedy.json["choices"][0]["text"]
    assert SamplingParams(temperature=5e-324).greedy
    assert not SamplingParams(temperature=decoding.GREEDY_BELOW).greedy


def test_sampling_is_numerically_safe():
    generator = torch.Generator().manual_seed(0)
    nan, inf = math.nan, math.inf
    rows = {
        "nan and -inf logits": ([nan, 1.0, 3.0, -inf], {1, 2}),
        "all -inf": ([-inf, -inf, -inf], {0, 1, 2}),
        "an inf logit": ([0.0, inf, 1.0], {1}),
        "huge logits": ([3e38, -3e38, 3e38], {0, 2}),
    }
    for temperature in (2e-5, 0.7, 2.0):
        for top_p in (1.0, 0.5):
            params = SamplingParams(temperature=temperature, top_p=top_p)
            for what, (logits, allowed) in rows.items():
                token = decoding._sample(torch.tensor(logits), params, generator)
                assert token in allowed, (what, temperature, top_p, token)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            SamplingParams(temperature=bad)
        with pytest.raises(ValueError, match="top_p"):
            SamplingParams(top_p=bad)


def test_a_failing_row_fails_only_itself(engine, monkeypatch):
    """A row whose own sampling raises ends with an error; the batch's other rows finish."""
    real = decoding._sample

    def poisoned(logits, params, generator):
        if params.seed == 13:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, params, generator)

    monkeypatch.setattr(decoding, "_sample", poisoned)
    prompt = engine.tokenize("The cat sits")
    good = SamplingParams(max_tokens=4)
    jobs = [Job(prompt, None, good) for _ in range(7)]
    jobs.insert(3, Job(prompt, None, SamplingParams(max_tokens=4, temperature=0.7, seed=13)))
    results = engine.complete(jobs)
    alone = engine.complete([Job(prompt, None, good)])[0]
    assert [r.finish_reason == "error" for r in results] == [k == 3 for k in range(8)]
    assert isinstance(results[3].error, RuntimeError)
    assert all(r.text == alone.text and r.error is None for k, r in enumerate(results) if k != 3)


def test_a_failing_batch_is_rerun_in_halves():
    """When the whole batch raises (say one row's adapter breaks the forward pass), the worker
    reruns it in halves: only the job that fails alone gets the exception."""
    batches = []

    def run(jobs):
        batches.append(len(jobs))
        if any(job.prompt_ids == [666] for job in jobs):
            raise RuntimeError("bad adapter")
        return [Completion(str(job.prompt_ids[0]), [], "length", 1) for job in jobs]

    batcher = Batcher(run, max_batch=8, window_s=0.0)
    try:
        jobs = [Job([k + 1]) for k in range(8)]
        jobs[5] = Job([666])
        futures = batcher.submit(jobs)
        for k, future in enumerate(futures):
            if k == 5:
                with pytest.raises(RuntimeError, match="bad adapter"):
                    future.result(timeout=10)
            else:
                assert future.result(timeout=10).text == str(k + 1)
    finally:
        batcher.close()
    assert batches[0] == 8 and len(batches) <= 8, batches  # 8, then 4 + 4, 2 + 2, 1 + 1


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_one_bad_request_among_eight_concurrent(make_app, engine, monkeypatch, batching):
    """Eight concurrent requests batched together: a tiny temperature is served; a request whose
    row fails gets a JSON 500 alone, the other seven their answers."""
    real = decoding._sample

    def poisoned(logits, params, generator):
        if params.seed == 13:
            raise RuntimeError("kaput")
        return real(logits, params, generator)

    monkeypatch.setattr(decoding, "_sample", poisoned)
    sizes = []

    def count(forward):
        return lambda rows, *args: sizes.append(len(rows)) or forward(rows, *args)

    patch_decoders(monkeypatch, engine, forward=count)
    app = make_app(BATCH_WINDOW_MS=300, BATCH_MAX_WAIT_MS=600, BATCHING=batching)
    body = {"model": "base", "prompt": "hi", "max_tokens": 3}
    bodies = [{**body, "temperature": t} for t in (1e-300, 1e-45, 5e-324, 0, 0.5, 1.0, 0.0)]
    bodies.insert(2, {**body, "temperature": 0.7, "seed": 13})
    answers = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(k):
        local = app.test_client()
        start.wait(timeout=10)
        answers[k] = local.post("/v1/completions", json=bodies[k])

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert max(sizes) > 1, f"the requests were not batched together: {sizes}"
    statuses = [a.status_code for a in answers]
    assert statuses == [500 if k == 2 else 200 for k in range(len(bodies))], statuses
    _error(answers[2], 500, "RuntimeError")


# --- 2-4. bad input is a 400 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route, raw",
    [
        ("/v1/adapters", r'{"description": "\ud800"}'),
        ("/v1/adapters", r'{"descriptions": ["ok", "x\udfff"]}'),
        ("/v1/completions", r'{"model": "base", "prompt": "\ud800"}'),
        ("/v1/completions", r'{"model": "base", "prompt": ["ok", "\udc00 tail"]}'),
        ("/v1/completions", r'{"adapter_description": "\ud800", "prompt": "hi"}'),
        ("/v1/completions", r'{"model": "base", "prompt": "hi", "stop": "\ud800"}'),
        (
            "/v1/chat/completions",
            r'{"model": "base", "messages": [{"role": "user", "content": "\ud800"}]}',
        ),
        (
            "/v1/chat/completions",
            r'{"adapter_description": "\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/adapters", r'{"\ud800": "a key"}'),
    ],
)
def test_lone_surrogates_are_400(client, route, raw):
    error = _error(client.post(route, data=raw), 400, "surrogate")
    assert error["code"] == "invalid_unicode"


def test_paired_surrogates_are_fine(client):
    response = client.post(
        "/v1/adapters", data=r'{"description": "Answer with emoji \ud83d\ude00"}'
    )
    assert response.status_code == 201 and "\U0001f600" in response.json["condition"]["description"]
    response = client.post(
        "/v1/completions", data=r'{"model": "base", "prompt": "hi \ud83d\ude00", "max_tokens": 2}'
    )
    assert response.status_code == 200


@pytest.mark.parametrize("route", ROUTES)
def test_deeply_nested_json_is_400(client, route):
    for raw in (
        "[" * 1000,
        "[" * 100_000,
        '{"a":' * 1000,
        '{"description": ' + "[" * 40 + "]" * 40 + "}",
    ):
        _error(client.post(route, data=raw), 400, "nested deeper")
    _error(client.post(route, data="[" * 10 + "]" * 10), 400, "JSON object")


def test_non_standard_json_is_400(client):
    for raw in (
        '{"model": "base", "prompt": "hi", "temperature": NaN}',
        '{"model": "base", "prompt": "hi", "temperature": Infinity}',
        '{"model": "base", "prompt": "hi", "max_tokens": 1' + "0" * 5000 + "}",
        b'{"model": "base", "prompt": "\xff\xfe"}',
    ):
        _error(client.post("/v1/completions", data=raw), 400, "valid JSON")


def test_paging_takes_ascii_digits_only(client):
    for query in (
        "limit=%C2%B2",
        "offset=%C2%B9",
        "limit=%D9%A1",
        "offset=%EF%BC%91",
        "limit=" + "9" * 5000,
        "offset=+1",
        "limit= 5",
    ):
        _error(client.get(f"/v1/adapters?{query}"), 400, "query parameter")
    assert client.get("/v1/adapters?limit=2&offset=0").status_code == 200


# --- 5. every /v1 answer is JSON ----------------------------------------------------------------------


def test_double_slashes_and_options_answer_json(client):
    for path in (
        "/v1//adapters",
        "/v1/adapters//download",
        f"/v1//adapters/{'0' * 64}",
        "/v1/adapters/",
    ):
        _error(client.get(path), 404, "not found")
    _error(client.post("/v1//completions", json={}), 404, "not found")
    for path, methods in (
        ("/v1/adapters", {"GET", "POST", "OPTIONS"}),
        ("/v1/completions", {"POST", "OPTIONS"}),
        (f"/v1/adapters/{'0' * 64}", {"GET", "DELETE", "OPTIONS"}),
    ):
        response = client.options(path)
        assert response.status_code == 200 and response.is_json, response.data[:200]
        assert methods <= set(response.json["allow"]) and "OPTIONS" in response.headers["Allow"]
    _error(client.options("/v1/nothing"), 404, "not found")


def test_options_needs_the_api_key_like_everything_else(make_app):
    client = make_app(API_KEYS=["k"]).test_client()
    _error(client.options("/v1/adapters"), 401, "API key")
    assert client.options("/v1/adapters", headers={"Authorization": "Bearer k"}).is_json


# --- real waitress: bodies over the server's limit, idle connections ----------------------------------


@pytest.fixture
def serve(make_app):
    """Factory: (app, server) of waitress in a thread on 127.0.0.1; all are stopped afterwards."""
    running = []

    def start(**config):
        app = make_app(**config)
        server = BackgroundServer(app, threads=4)
        running.append(server)
        return app, server

    yield start
    for server in running:
        server.stop()


def _raw(url: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the server, read until it closes (or ``timeout``)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_body_over_the_servers_limit_is_json_413(serve):
    """Waitress refuses a body over 4x MAX_CONTENT_LENGTH after its headers: with the API's JSON
    error (not plain text), and without first inviting the body with '100 Continue'."""
    _, server = serve(MAX_CONTENT_LENGTH=1000)
    head = "POST /v1/adapters HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for extra in ("", "Expect: 100-continue\r\n"):
        raw = _raw(server.url, f"{head}{extra}Content-Length: 10000000\r\n\r\n".encode())
        status, headers, body = _parse(raw)
        assert status == 413, raw[:300]
        assert headers["content-type"] == "application/json", raw[:300]
        error = json.loads(body)["error"]
        assert error["code"] == "request_entity_too_large"
        assert "limit is 1000 bytes" in error["message"]
    # a client that sends all of a large body before reading still reads the 413: the server
    # drains the body instead of resetting the connection under it
    connection = http.client.HTTPConnection(
        *server.url.removeprefix("http://").split(":"), timeout=10
    )
    try:
        connection.request("POST", "/v1/adapters", body=b"x" * (16 << 20))
        response = connection.getresponse()
        assert response.status == 413 and response.getheader("Content-Type") == "application/json"
        assert "limit is 1000 bytes" in json.loads(response.read())["error"]["message"]
    finally:
        connection.close()
    # up to 4x the limit, the app itself answers (the body is read, the connection stays usable)
    request = urllib.request.Request(
        f"{server.url}/v1/adapters", data=json.dumps({"description": "x" * 2500}).encode()
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert (
        caught.value.code == 413
        and "limit is 1000 bytes" in json.loads(caught.value.read())["error"]["message"]
    )


def _healthz(url: str, timeout: float) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as response:
        assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    return time.monotonic() - start


def _open_idle(url: str, count: int, half_sent: int = 0) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for k in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if k < half_sent:  # a request cut off in its headers, and one cut off in its body
            sock.sendall(
                b"POST /v1/adapters HTTP/1.1\r\nHost: x\r\n"
                if k % 2
                else b"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
        sockets.append(sock)
    return sockets


def test_idle_connections_do_not_lock_others_out(serve):
    """120 idle and 20 half-sent connections (more than waitress's default limit of 100): a new
    client is still answered at once."""
    _, server = serve()
    sockets = _open_idle(server.url, 140, half_sent=20)
    try:
        time.sleep(0.3)  # let the server accept them
        assert _healthz(server.url, timeout=5) < 3
    finally:
        for sock in sockets:
            sock.close()


def test_idle_connections_are_closed_after_the_channel_timeout(serve):
    """Past CONNECTION_LIMIT, new clients wait only until idle ones time out (CHANNEL_TIMEOUT_S)."""
    _, server = serve(CONNECTION_LIMIT=20, CHANNEL_TIMEOUT_S=1, CLEANUP_INTERVAL_S=1)
    assert server.server.adj.connection_limit == 20 and server.server.adj.channel_timeout == 1
    sockets = _open_idle(server.url, 30, half_sent=6)
    try:
        assert _healthz(server.url, timeout=8) < 6
        first = sockets[0]
        first.settimeout(5)
        assert first.recv(100) == b"", "the server closes an idle connection"
    finally:
        for sock in sockets:
            sock.close()


def test_connection_settings_are_validated(make_app):
    for key in (
        "THREADS",
        "CONNECTION_LIMIT",
        "CHANNEL_TIMEOUT_S",
        "CLEANUP_INTERVAL_S",
        "BACKLOG",
    ):
        with pytest.raises(ValueError, match=key):
            make_app(**{key: 0})


def test_an_idle_background_server_does_not_spin(serve):
    """Its loop thread sleeps between events. (It once asked waitress for a 0.05 s poll timeout,
    which waitress reads as an int, 0: the loop took a whole core and slowed every decode step
    of the same process about 5x.) Stopping it still ends the loop thread at once."""
    import os
    from pathlib import Path

    _, server = serve()

    def cpu_seconds() -> float:
        stat = Path(f"/proc/self/task/{server.thread.native_id}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_seconds()
    time.sleep(1.0)
    assert cpu_seconds() - before < 0.2, "the loop thread busy-waits"
    started = time.monotonic()
    server.stop()
    assert not server.thread.is_alive() and time.monotonic() - started < 2
