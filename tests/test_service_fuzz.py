"""A bounded, seeded fuzz test of every /v1 route through Flask's test client: random and
malformed JSON bodies, wrong types, odd Unicode, odd query strings and paths. No answer may be a
5xx, and every /v1 answer is a JSON body (but HEAD's, and a download's zip); errors in the OpenAI
error shape."""

from __future__ import annotations

import json
import random

import pytest

from service import create_app

SEED = 20240510
REQUESTS = 400

STRINGS = [
    "",
    " ",
    "hi",
    "The cat sits",
    "Translate English to French.",
    "base",
    "x" * 3000,
    "\u00b2",
    "\u0661\u0662",
    "\U0001f600 emoji",
    "\u202eright-to-left",
    "null\u0000byte",
    "caf\u00e9",
    "\ufffd",
    "<|im_end|>",
    "../../etc/passwd",
    "0" * 64,
    "%00",
    "system",
    "user",
    "text",
]
NUMBERS = [
    0,
    1,
    -1,
    2,
    3,
    512,
    513,
    2**31,
    -(2**63),
    2**63,
    10**30,
    0.5,
    1e-300,
    5e-324,
    -0.0,
    1e308,
    2.0000001,
]
FIELDS = [
    "description",
    "descriptions",
    "dtype",
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "ignore_eos",
    "adapter_description",
    "stream",
    "stream_options",
    "n",
    "logprobs",
    "top_logprobs",
    "role",
    "content",
    "type",
]
# raw fragments json.dumps cannot write: lone surrogates, non-standard constants, deep nesting
RAW_VALUES = [
    r'"\ud800"',
    r'"a\udfffb"',
    r'"\ud83d\ude00"',
    "NaN",
    "-Infinity",
    "1" + "0" * 4400,
    "[" * 50 + "]" * 50,
]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth > 3 or kind < 0.35:
        return rng.choice(STRINGS)
    if kind < 0.6:
        return rng.choice(NUMBERS)
    if kind < 0.7:
        return rng.choice([None, True, False])
    if kind < 0.85:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def valid_body(rng: random.Random, route: str, adapter_id: str) -> dict:
    model = rng.choice(["base", adapter_id])
    if route == "/v1/adapters":
        return rng.choice([{"description": rng.choice(STRINGS[2:])}, {"descriptions": ["a", "b"]}])
    if route == "/v1/completions":
        return {"model": model, "prompt": rng.choice(["hi", ["a", "b"]]), "max_tokens": 2}
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def mutate(rng: random.Random, body: dict) -> dict:
    body = dict(body)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.5:
            body[rng.choice(FIELDS)] = random_value(rng)
        elif choice < 0.7 and body:
            del body[rng.choice(sorted(body))]
        elif "messages" in body and choice < 0.85:
            body["messages"] = [
                random_value(rng)
                if rng.random() < 0.5
                else {"role": rng.choice(STRINGS), "content": random_value(rng)}
            ]
        else:
            body[rng.choice(FIELDS)] = random_value(rng)
    return body


def raw_body(rng: random.Random, body: dict) -> bytes:
    """Turn a body into bytes, sometimes broken: a raw fragment spliced in, truncation, random
    bytes, another encoding, or a non-object."""
    text = json.dumps(body)
    choice = rng.random()
    if choice < 0.55:
        return text.encode()
    if choice < 0.7:
        key = rng.choice(FIELDS)
        return (
            text[:-1] + ("," if len(body) else "") + f'"{key}": {rng.choice(RAW_VALUES)}' + "}"
        ).encode()
    if choice < 0.77:
        return text.encode()[: rng.randint(0, len(text))]
    if choice < 0.84:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if choice < 0.9:
        return text.encode(rng.choice(["utf-16", "utf-32", "latin-1"]), errors="replace")
    return json.dumps(random_value(rng)).encode()


def random_query(rng: random.Random) -> str:
    values = [
        "1",
        "0",
        "-1",
        "100",
        "101",
        "abc",
        "%C2%B2",
        "%D9%A1",
        "9" * 40,
        "",
        "%00",
        "1.5",
        "+3",
        "%FF",
    ]
    keys = ["limit", "offset", "x", "limit"]
    return "&".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(0, 3)))


@pytest.fixture
def app(engine, tmp_path):
    app = create_app(
        {"TESTING": True, "STORE": str(tmp_path / "store"), "MAX_CONTENT_LENGTH": 64 * 1024},
        engine=engine,
    )
    yield app
    app.extensions["hypergen"].close()


def check(response, method: str, path: str, sent) -> None:
    where = f"{method} {path} {sent!r:.300}"
    assert response.status_code < 500, (where, response.status_code, response.data[:300])
    if method == "GET" and path.endswith("/download") and response.status_code == 200:
        assert response.mimetype == "application/zip", where  # a non-JSON answer
    elif response.status_code == 200 and response.mimetype == "text/event-stream":
        events = response.get_data(as_text=True).split("\n\n")  # stream: true, JSON events
        assert events[-2:] == ["data: [DONE]", ""], (where, events[-3:])
        for event in events[:-2]:
            assert "error" not in json.loads(event.removeprefix("data: ")), (where, event)
    elif path.startswith("/v1") and method != "HEAD":
        assert response.is_json, (where, response.status_code, response.data[:200])
        body = response.get_json()
        if response.status_code >= 400:
            assert set(body["error"]) == {"message", "type", "param", "code"}, (where, body)


def test_fuzz_every_v1_route(app):
    rng = random.Random(SEED)
    client = app.test_client()
    created = client.post("/v1/adapters", json={"description": "Translate English to French."})
    assert created.status_code == 201
    adapter_id = created.json["id"]
    ids = [adapter_id, "0" * 64, "zz", "A" * 64, "%F0%9F%98%80", "%C2%B2" * 3, "", "..", "a" * 65]
    statuses: dict[int, int] = {}
    for _ in range(REQUESTS):
        kind = rng.random()
        if kind < 0.55:  # a body to a POST route
            path = rng.choice(["/v1/adapters", "/v1/completions", "/v1/chat/completions"])
            body = valid_body(rng, path, adapter_id)
            if rng.random() < 0.85:
                body = mutate(rng, body)
            data = raw_body(rng, body)
            headers = {
                "Content-Type": rng.choice(
                    [
                        "application/json",
                        "text/plain",
                        "application/x-www-form-urlencoded",
                        "multipart/form-data",
                    ]
                )
            }
            method = "POST"
            response = client.post(path, data=data, headers=headers)
            sent = data
        else:  # the other routes, methods, queries and paths
            method = rng.choice(["GET", "GET", "DELETE", "OPTIONS", "PUT", "PATCH", "HEAD", "POST"])
            target = rng.choice(ids)
            path = rng.choice(
                [
                    "/v1/adapters",
                    f"/v1/adapters/{target}",
                    f"/v1/adapters/{target}/download",
                    "/v1/models",
                    "/v1//adapters",
                    f"/v1/adapters//{target}",
                    "/v1/completions",
                    "/v1/chat/completions",
                    "/v1/nothing",
                    "/v1/",
                    "/v1",
                ]
            )
            query = random_query(rng)
            sent = query
            response = client.open(f"{path}?{query}" if query else path, method=method)
        check(response, method, path, sent)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    # the fuzzer reaches both successes and errors (it is not all 400s)
    assert statuses.get(200, 0) + statuses.get(201, 0) >= 20, statuses
    assert statuses.get(400, 0) >= 50, statuses
