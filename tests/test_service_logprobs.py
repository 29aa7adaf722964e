"""``logprobs`` (top-k per token) and ``n`` > 1 on both completion routes, as the OpenAI API
defines them (issue 10, item 13); log-probabilities checked against a plain forward pass."""

from __future__ import annotations

import openai
import pytest
import torch

from service.server import BackgroundServer


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def _post(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.json
    return response.json


def test_completion_logprobs_match_the_model(client, engine):
    prompt = "The cat sits on"
    body = {"model": "base", "prompt": prompt, "max_tokens": 6, "logprobs": 3, "ignore_eos": True}
    choice = _post(client, "/v1/completions", body)["choices"][0]
    logprobs = choice["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(logprobs["tokens"]) == 6 and "".join(logprobs["tokens"]) == choice["text"]
    lengths = [len(t) for t in logprobs["tokens"]]
    assert logprobs["text_offset"] == [sum(lengths[:i]) for i in range(6)]

    # the same numbers from one forward pass over prompt + completion, no cache
    prompt_ids = engine.tokenize(prompt)
    ids = prompt_ids + engine.tokenizer(choice["text"], add_special_tokens=False).input_ids
    with torch.no_grad():
        log_probs = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
    for i, (logprob, top) in enumerate(zip(logprobs["token_logprobs"], logprobs["top_logprobs"])):
        step = log_probs[len(prompt_ids) - 1 + i]
        token = ids[len(prompt_ids) + i]
        assert logprob == pytest.approx(float(step[token]), abs=1e-4)
        best, best_ids = step.topk(3)
        expected = {}
        for t, v in zip(best_ids.tolist(), best.tolist()):
            # two tokens may decode alike: keep the first
            expected.setdefault(engine.detokenize([t]), v)
        assert top == pytest.approx(expected, abs=1e-4)  # a JSON object: its order is not kept
        assert logprob == pytest.approx(max(top.values()), abs=1e-6), "greedy takes the top one"


def test_logprobs_zero_gives_the_chosen_tokens_only_and_a_stop_cut_drops_the_rest(client):
    body = {"model": "base", "prompt": "The cat", "max_tokens": 6, "logprobs": 0}
    choice = _post(client, "/v1/completions", body)["choices"][0]
    assert all(top == {} for top in choice["logprobs"]["top_logprobs"])
    if len(choice["text"]) > 2:
        stop = choice["text"][1:3]
        cut = _post(client, "/v1/completions", {**body, "stop": stop})["choices"][0]
        assert "".join(cut["logprobs"]["tokens"]).startswith(cut["text"])
        assert max(cut["logprobs"]["text_offset"], default=0) < max(len(cut["text"]), 1)
    plain = _post(client, "/v1/completions", {**body, "logprobs": None})["choices"][0]
    assert plain["logprobs"] is None


def test_n_completions_per_prompt(client):
    body = {
        "model": "base",
        "prompt": ["The cat", "Solve"],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 7,
        "n": 3,
        "ignore_eos": True,
    }
    out = _post(client, "/v1/completions", body)
    assert [c["index"] for c in out["choices"]] == list(range(6))
    texts = [c["text"] for c in out["choices"]]
    assert len(set(texts[:3])) > 1, "copies of one prompt sample differently"
    assert _post(client, "/v1/completions", body)["choices"] == out["choices"], "seeded"
    one = _post(client, "/v1/completions", {**body, "n": 1})
    assert [c["text"] for c in one["choices"]] == [texts[0], texts[3]], "copy 0 = n=1"
    assert out["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"], "prompts count once"
    assert out["usage"]["completion_tokens"] == 6 * 8
    greedy = _post(client, "/v1/completions", {**body, "temperature": 0, "n": 2})
    assert greedy["choices"][0]["text"] == greedy["choices"][1]["text"]


def test_chat_logprobs_and_n(client):
    body = {
        "model": "base",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4,
        "ignore_eos": True,
        "logprobs": True,
        "top_logprobs": 2,
        "n": 2,
    }
    out = _post(client, "/v1/chat/completions", body)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for item in content:
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert item["bytes"] == list(item["token"].encode())
        assert len(item["top_logprobs"]) == 2
        assert item["logprob"] == pytest.approx(item["top_logprobs"][0]["logprob"], abs=1e-6)
    assert "".join(i["token"] for i in content) == out["choices"][0]["message"]["content"]
    no_top = _post(client, "/v1/chat/completions", {**body, "top_logprobs": None, "n": 1})
    assert all(i["top_logprobs"] == [] for i in no_top["choices"][0]["logprobs"]["content"])
    for bad, pattern in (
        ({"logprobs": 3}, "boolean"),
        ({"logprobs": False, "top_logprobs": 2}, "needs 'logprobs': true"),
        ({"top_logprobs": 21}, "between 0 and 20"),
        ({"n": 17}, "between 1 and 16"),
    ):
        response = client.post("/v1/chat/completions", json={**body, **bad})
        assert response.status_code == 400 and pattern in response.json["error"]["message"]


def test_openai_client_reads_logprobs_and_n(make_app):
    app = make_app()
    server = BackgroundServer(app, threads=4)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        out = client.completions.create(
            model="base",
            prompt="The cat",
            max_tokens=3,
            logprobs=2,
            n=2,
            extra_body={"ignore_eos": True},
        )
        assert len(out.choices) == 2 and len(out.choices[1].logprobs.tokens) == 3
        assert len(out.choices[0].logprobs.top_logprobs[0]) == 2
        chat = client.chat.completions.create(
            model="base",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            logprobs=True,
            top_logprobs=1,
            extra_body={"ignore_eos": True},
        )
        assert len(chat.choices[0].logprobs.content) == 3
        assert len(chat.choices[0].logprobs.content[0].top_logprobs) == 1
    finally:
        server.stop()
