"""``stream: true`` on both completion routes (issue 10, item 11): server-sent events in OpenAI's
chunk format ending with ``data: [DONE]``, equal to the answer without streaming, read by the
official ``openai`` client; a client that disconnects mid-stream frees its batch slot."""

from __future__ import annotations

import json
import socket
import threading
from urllib.parse import urlparse

import openai
import pytest

from service.server import BackgroundServer
from tests.conftest import patch_decoders

PROMPT = {"model": "base", "prompt": "The cat sits on", "max_tokens": 12, "ignore_eos": True}
CHAT = {
    "model": "base",
    "messages": [{"role": "user", "content": "What day comes after Monday?"}],
    "max_tokens": 10,
    "ignore_eos": True,
}


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def _events(response) -> list:
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    assert body.endswith("data: [DONE]\n\n")
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events[:-1]


def _texts(events: list, key) -> dict[int, str]:
    texts: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + key(choice)
    return texts


def test_completion_stream_equals_the_plain_answer(client):
    plain = client.post("/v1/completions", json=PROMPT).json
    events = _events(client.post("/v1/completions", json={**PROMPT, "stream": True}))
    assert len(events) > 2, "more than one chunk"
    assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events)
    assert _texts(events, lambda c: c["text"]) == {0: plain["choices"][0]["text"]}
    finishes = [c["finish_reason"] for e in events for c in e["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}


def test_stream_with_n_stop_and_usage(client):
    plain = client.post(
        "/v1/completions", json={**PROMPT, "prompt": ["The cat", "Solve"], "n": 2}
    ).json
    body = {**PROMPT, "prompt": ["The cat", "Solve"], "n": 2, "stream": True}
    events = _events(
        client.post("/v1/completions", json={**body, "stream_options": {"include_usage": True}})
    )
    assert _texts(events[:-1], lambda c: c["text"]) == {
        c["index"]: c["text"] for c in plain["choices"]
    }
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]
    # a stop string is never sent, not even in part
    text = plain["choices"][0]["text"]
    stop = text[3:6] if len(text) > 6 else text[-2:]
    cut = client.post("/v1/completions", json={**PROMPT, "prompt": "The cat", "stop": stop}).json
    streamed = _events(
        client.post(
            "/v1/completions", json={**PROMPT, "prompt": "The cat", "stop": stop, "stream": True}
        )
    )
    assert _texts(streamed, lambda c: c["text"]) == {0: cut["choices"][0]["text"]}
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_equals_the_plain_answer(client):
    plain = client.post("/v1/chat/completions", json=CHAT).json
    events = _events(client.post("/v1/chat/completions", json={**CHAT, "stream": True}))
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = _texts(events, lambda c: c["delta"].get("content", ""))
    assert content == {0: plain["choices"][0]["message"]["content"]}
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_openai_client_streams(make_app):
    server = BackgroundServer(make_app(), threads=4)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        plain = client.completions.create(model="base", prompt="The cat", max_tokens=8)
        pieces = [
            c.choices[0].text
            for c in client.completions.create(
                model="base", prompt="The cat", max_tokens=8, stream=True
            )
        ]
        assert "".join(pieces) == plain.choices[0].text and len(pieces) > 1
        chunks = list(
            client.chat.completions.create(
                model="base",
                messages=CHAT["messages"],
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        plain_chat = client.chat.completions.create(
            model="base", messages=CHAT["messages"], max_tokens=6
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain_chat.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == plain_chat.usage.completion_tokens
    finally:
        server.stop()


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_a_client_that_disconnects_frees_its_slot(make_app, engine, monkeypatch, batching):
    finished = []
    done = threading.Event()

    def spy(step):
        def spied():
            results = step()
            finished.extend((c.finish_reason, c.completion_tokens) for _, c in results)
            if results:
                done.set()
            return results

        return spied

    patch_decoders(monkeypatch, engine, step=spy)
    server = BackgroundServer(make_app(BATCHING=batching), threads=4)
    try:
        url = urlparse(server.url)
        payload = json.dumps({**PROMPT, "max_tokens": 240, "stream": True}).encode()
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            received = b""
            while b"data: {" not in received:  # tokens arrive while the row decodes
                data = sock.recv(4096)
                assert data, "closed before the first event"
                received += data
            assert received.startswith(b"HTTP/1.1 200"), received[:200]
        # the client went away mid-stream
        assert done.wait(30)
        reason, tokens = finished[0]
        assert reason == "cancelled" and tokens < 240, finished
    finally:
        server.stop()
