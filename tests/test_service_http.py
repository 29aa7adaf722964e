"""The service over real HTTP (waitress on 127.0.0.1, an ephemeral port): the official ``openai``
client against the completions endpoints, and concurrent clients with different adapters batched
into shared forward passes, each answer equal to the same request served alone."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import openai
import pytest

from service import create_app
from service.server import BackgroundServer

KEY = "sk-test-key"


@pytest.fixture
def serve(engine, tmp_path):
    """Factory: (app, base URL) of a waitress server in a thread; all are closed afterwards."""
    running = []

    def start(**config):
        app = create_app({"STORE": str(tmp_path / "store"), **config}, engine=engine)
        server = BackgroundServer(app, threads=24)
        running.append((app, server))
        return app, server.url

    yield start
    for app, server in running:
        server.stop()
        app.extensions["hypergen"].close()


def _request(
    method: str, url: str, body: dict | None = None, key: str | None = None
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_openai_client(serve, engine):
    app, url = serve(API_KEYS=[KEY])
    status, meta = _request(
        "POST", f"{url}/v1/adapters", {"description": "Translate English to French."}, KEY
    )
    assert status == 201
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)

    completion = client.completions.create(model=meta["id"], prompt="The cat sits", max_tokens=8)
    assert completion.model == meta["id"] and completion.object == "text_completion"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 8
    local = app.test_client()
    headers = {"Authorization": f"Bearer {KEY}"}
    same = local.post(
        "/v1/completions",
        json={"model": meta["id"], "prompt": "The cat sits", "max_tokens": 8},
        headers=headers,
    )
    assert completion.choices[0].text == same.json["choices"][0]["text"]
    base = client.completions.create(model="base", prompt="The cat sits", max_tokens=8)
    assert base.choices[0].text != completion.choices[0].text, "the adapter must change the answer"

    messages = [{"role": "user", "content": "Hello, how are you?"}]
    chat = client.chat.completions.create(model=meta["id"], messages=messages, max_tokens=6)
    assert chat.object == "chat.completion" and chat.model == meta["id"]
    assert chat.choices[0].message.role == "assistant" and isinstance(
        chat.choices[0].message.content, str
    )
    assert chat.usage.prompt_tokens == len(engine.tokenize_chat(messages))

    by_description = client.completions.create(
        model="base",
        prompt="2 plus 3 is",
        max_tokens=4,
        extra_body={"adapter_description": "Solve arithmetic."},
    )
    assert by_description.model == engine.adapter_id("Solve arithmetic.")
    chat_by_description = client.chat.completions.create(
        model="base",
        messages=messages,
        max_tokens=4,
        extra_body={"adapter_description": "Solve arithmetic."},
    )
    assert chat_by_description.model == by_description.model
    assert {meta["id"], by_description.model, engine.base_model} <= {
        m.id for m in client.models.list()
    }

    with pytest.raises(openai.NotFoundError, match="not found"):
        client.completions.create(model="0" * 64, prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="between 1 and 512"):
        client.chat.completions.create(model=meta["id"], messages=messages, max_tokens=10_000)
    stranger = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        stranger.completions.create(model=meta["id"], prompt="hi", max_tokens=2)


def _prefill_histogram(url: str) -> tuple[float, float]:
    """(prefills of exactly one job, all prefills) from /metrics: a prefill is a batch's start,
    or jobs joining a running batch."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    ones = re.search(r'^hypergen_prefill_size_bucket\{le="1.0"\} (\S+)$', text, re.MULTILINE)
    count = re.search(r"^hypergen_prefill_size_count (\S+)$", text, re.MULTILINE)
    return float(ones.group(1)) if ones else 0.0, float(count.group(1)) if count else 0.0


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_concurrent_requests_are_batched_and_each_equals_alone(serve, batching):
    """Many threads, different adapters, prompts and lengths: the batched answers equal the same
    requests served one at a time, and batching really happened."""
    _, url = serve(BATCH_WINDOW_MS=150, MAX_BATCH=16, BATCHING=batching)
    n = 12
    descriptions = [
        f"Task {i}: answer in the style number {i}, about topic {i * 7 % 5}." for i in range(n)
    ]
    status, made = _request("POST", f"{url}/v1/adapters", {"descriptions": descriptions})
    assert status == 201 and len({a["id"] for a in made["data"]}) == n
    prompts = [
        "The cat sits",
        "What is 2 plus 3?",
        "I loved it.",
        "Hello, how are",
        "Q: What day",
        "Translate: the",
    ]
    bodies = []
    for i, adapter in enumerate(made["data"]):
        body = {
            "model": adapter["id"],
            "prompt": prompts[i % len(prompts)],
            "max_tokens": 3 + i % 6,
        }
        if i % 4 == 3:
            body["model"] = "base"
        bodies.append(("/v1/completions", body))
    chat = {
        "model": made["data"][0]["id"],
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 5,
    }
    bodies.append(("/v1/chat/completions", chat))

    barrier = threading.Barrier(len(bodies))
    together: list = [None] * len(bodies)

    def client(i: int) -> None:
        barrier.wait(timeout=30)
        together[i] = _request("POST", url + bodies[i][0], bodies[i][1])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    ones, prefills = _prefill_histogram(url)
    assert prefills < len(bodies) and ones < prefills, (
        f"no batching: {prefills} prefills, {ones} of one job"
    )

    for (path, body), (status, answer) in zip(bodies, together):
        assert status == 200, answer
        status, alone = _request("POST", url + path, body)
        assert status == 200 and alone["choices"] == answer["choices"], (body, alone, answer)
    assert _prefill_histogram(url)[0] == ones + len(bodies), "served alone: prefills of one"


def test_errors_over_http_are_json(serve):
    """Limits hold behind waitress too: a too-large body and an unknown route answer JSON."""
    _, url = serve(MAX_CONTENT_LENGTH=4096)
    status, body = _request("POST", f"{url}/v1/adapters", {"description": "x" * 10_000})
    assert status == 413 and "limit is 4096 bytes" in body["error"]["message"]
    status, body = _request("GET", f"{url}/v1/nothing")
    assert status == 404 and body["error"]["type"] == "not_found_error"
