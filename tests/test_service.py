"""The service through Flask's test client: every route and every error path, the engine's batched
decoding, the adapter store, configuration. Tiny models from conftest; no network."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from hypergen import AdapterGenerator, apply_adapters, load_base_model, load_peft
from hypergen.checkpoint import CONFIG_NAME
from hypergen.decoding import Job, SamplingParams
from service import create_app
from service.batched_lora import BatchedLora
from service.batcher import Batcher
from service.engine import Engine, resolve_checkpoint
from service.store import AdapterStore, LRUCache
from tests.conftest import ENCODER, hf_greedy, make_generator, patch_decoders

DESCRIPTION = "Translate English to French."


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def _adapter(client, description=DESCRIPTION, **extra) -> dict:
    response = client.post("/v1/adapters", json={"description": description, **extra})
    assert response.status_code in (200, 201), response.json
    return response.json


def _error(response, status: int, pattern: str = "") -> dict:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.is_json, response.data[:200]
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert re.search(pattern, error["message"]), error["message"]
    return error


def _metric(client, line_prefix: str) -> float:
    text = client.get("/metrics").data.decode()
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)
    ]
    return sum(values)


# --- adapters ------------------------------------------------------------------------------------


def test_create_adapter_is_content_addressed(client, engine):
    response = client.post("/v1/adapters", json={"description": DESCRIPTION})
    assert response.status_code == 201
    meta = response.json
    assert re.fullmatch(r"[0-9a-f]{64}", meta["id"])
    assert response.headers["Location"] == f"/v1/adapters/{meta['id']}"
    assert meta["download_url"].endswith(f"/v1/adapters/{meta['id']}/download")
    assert meta["condition"] == {"kind": "hashing", "description": DESCRIPTION}
    assert meta["lora"] == {
        "rank": 4,
        "alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "dtype": "float32",
    }
    assert meta["checkpoint"]["hash"] == engine.checkpoint_hash and meta["untrained"] is False
    assert meta["size_bytes"] > 0 and "warning" not in meta
    # same input (up to whitespace) -> same id, served from the store
    again = client.post("/v1/adapters", json={"description": "  Translate English\nto   French. "})
    assert again.status_code == 200 and again.json["id"] == meta["id"]
    assert _metric(client, 'hypergen_adapter_lookups_total{source="store"}') == 1
    # other settings -> another id
    other = client.post("/v1/adapters", json={"description": DESCRIPTION, "dtype": "bfloat16"})
    assert other.status_code == 201 and other.json["id"] != meta["id"]
    assert other.json["lora"]["dtype"] == "bfloat16"


def test_batch_form_generates_in_one_forward_pass(client, engine, monkeypatch):
    calls = []
    original = engine.generator.generate
    monkeypatch.setattr(
        engine.generator, "generate", lambda c: calls.append(list(c)) or original(c)
    )
    single = _adapter(client, "Classify sentiment.")
    calls.clear()
    descriptions = [
        "Classify sentiment.",
        "Solve arithmetic.",
        "Answer about dates.",
        "Solve  arithmetic.",
    ]
    response = client.post("/v1/adapters", json={"descriptions": descriptions})
    assert response.status_code == 201
    ids = [a["id"] for a in response.json["data"]]
    assert ids[0] == single["id"] and ids[1] == ids[3] and len(set(ids)) == 3
    assert calls == [["Solve arithmetic.", "Answer about dates."]], (
        "one pass, new descriptions only"
    )
    # each batch-made adapter equals the one made alone
    alone = engine.make_adapters(["Solve arithmetic."])[0]
    stored, _ = load_peft(client.application.extensions["hypergen"].store.folder(ids[1]))
    for name in alone.module_names:
        torch.testing.assert_close(stored.A[name], alone.A[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stored.B[name], alone.B[name], rtol=1e-5, atol=1e-6)
    assert client.post("/v1/adapters", json={"descriptions": descriptions[:2]}).status_code == 200


def test_get_list_delete(client):
    ids = [_adapter(client, f"Task number {i}.")["id"] for i in range(3)]
    assert client.get(f"/v1/adapters/{ids[0]}").json["condition"]["description"] == "Task number 0."
    page = client.get("/v1/adapters?limit=2").json
    assert page["total"] == 3 and page["has_more"] and len(page["data"]) == 2
    rest = client.get("/v1/adapters?limit=2&offset=2").json
    assert not rest["has_more"] and len(rest["data"]) == 1
    assert {a["id"] for a in page["data"] + rest["data"]} == set(ids)
    models = client.get("/v1/models").json["data"]
    assert models[0]["id"] == client.application.extensions["hypergen"].engine.base_model
    assert {m["id"] for m in models[1:]} == set(ids)

    deleted = client.delete(f"/v1/adapters/{ids[0]}")
    assert deleted.status_code == 200 and deleted.json == {
        "id": ids[0],
        "object": "adapter",
        "deleted": True,
    }
    _error(client.get(f"/v1/adapters/{ids[0]}"), 404, "not found")
    _error(client.delete(f"/v1/adapters/{ids[0]}"), 404, "not found")
    _error(client.get(f"/v1/adapters/{ids[0]}/download"), 404, "not found")
    body = {"model": ids[0], "prompt": "hi", "max_tokens": 2}
    assert (
        _error(client.post("/v1/completions", json=body), 404, "not found")["code"]
        == "model_not_found"
    )
    assert client.get("/v1/adapters").json["total"] == 2


def test_download_loads_in_peft_and_matches(client, engine, llama_dir, tokenizer, tmp_path):
    meta = _adapter(client)
    response = client.get(f"/v1/adapters/{meta['id']}/download")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        archive.extractall(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    header = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") for k in header)

    batch = tokenizer(
        ["The cat sits on the mat.", "What is 2 plus 3?"], return_tensors="pt", padding=True
    )
    lora = engine.make_adapters([DESCRIPTION])[0]
    with torch.no_grad(), apply_adapters(engine.model, lora):
        ours = engine.model(**batch).logits
    fresh, _ = load_base_model(llama_dir)
    peft_model = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(**batch).logits
        base = engine.model(**batch).logits
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - base).abs().max() > 1e-3, "the adapter must matter"


def test_bfloat16_adapter_served_as_downloaded(client, engine):
    meta = _adapter(client, dtype="bfloat16")
    store = client.application.extensions["hypergen"].store
    saved = load_file(store.folder(meta["id"]) / "adapter_model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    body = {"model": meta["id"], "prompt": "The cat", "max_tokens": 6}
    hot = client.post("/v1/completions", json=body).json["choices"][0]["text"]
    store.cache.pop(meta["id"])  # now read back from the folder
    assert client.post("/v1/completions", json=body).json["choices"][0]["text"] == hot


# --- completions ---------------------------------------------------------------------------------


def test_completions_apply_the_adapter(client, engine):
    meta = _adapter(client)
    prompt = "The cat sits"
    body = {"model": meta["id"], "prompt": prompt, "max_tokens": 8, "ignore_eos": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200
    out = response.json
    assert out["object"] == "text_completion" and out["model"] == meta["id"]
    assert out["id"].startswith("cmpl-") and out["choices"][0]["finish_reason"] == "length"
    ids = engine.tokenize(prompt)
    assert out["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 8,
        "total_tokens": len(ids) + 8,
    }
    lora = engine.make_adapters([DESCRIPTION])[0]
    expected = engine.complete([Job(ids, lora, SamplingParams(max_tokens=8, ignore_eos=True))])[0]
    assert out["choices"][0]["text"] == expected.text
    base = client.post("/v1/completions", json={**body, "model": "base"}).json
    assert base["model"] == "base" and base["choices"][0]["text"] != expected.text
    by_name = client.post("/v1/completions", json={**body, "model": engine.base_model}).json
    assert by_name["choices"][0]["text"] == base["choices"][0]["text"]


def test_adapters_and_completions_share_one_get_or_create(make_app, engine, monkeypatch):
    """POST /v1/adapters and a completion naming the same description find one adapter, made once
    (``service.adapters.AdapterRegistry.get_or_create``)."""
    made = []
    real = engine.make_adapters

    def counting(conditions, dtype="float32"):
        made.append(list(conditions))
        return real(conditions, dtype)

    monkeypatch.setattr(engine, "make_adapters", counting)
    client = make_app().test_client()
    created = client.post("/v1/adapters", json={"descriptions": ["Count words.", "Count words."]})
    assert created.status_code == 201 and made == [["Count words."]], "a repeat is made once"
    [first, second] = created.json["data"]
    assert first["id"] == second["id"]
    out = client.post(
        "/v1/completions",
        json={"adapter_description": "Count  words.", "prompt": "one two", "max_tokens": 2},
    )
    assert out.status_code == 200 and out.json["model"] == first["id"]
    assert made == [["Count words."]], "the completion found the stored adapter"
    fresh = client.post(
        "/v1/completions", json={"adapter_description": "New task.", "prompt": "x", "max_tokens": 1}
    )
    assert made[-1] == ["New task."]
    record = client.get(f"/v1/adapters/{fresh.json['model']}").json
    assert record["condition"]["description"] == "New task." and record["format"] == "peft-lora"


@pytest.mark.parametrize("spare", [False, True])
def test_a_new_adapter_is_written_beside_its_forward_pass_only_where_a_cpu_is_free(
    make_app, monkeypatch, spare
):
    """Writing the adapter of a completion's new description overlaps its forward pass where a
    CPU is free beside the torch threads; where every CPU runs the forward pass it goes first
    (beside it, it slowed the prefill by more than it took alone). Either way it is stored
    before the answer."""
    from service.adapters import AdapterRegistry
    from service.runtime import Runtime

    order = []
    monkeypatch.setattr(Runtime, "core_to_spare", property(lambda self: spare))
    app = make_app()
    batcher = app.extensions["hypergen"].batcher
    submit, put = batcher.submit, AdapterRegistry.put
    monkeypatch.setattr(
        batcher, "submit", lambda *a, **k: order.append("queued") or submit(*a, **k)
    )
    monkeypatch.setattr(
        AdapterRegistry, "put", lambda *a, **k: order.append("stored") or put(*a, **k)
    )
    client = app.test_client()
    out = client.post(
        "/v1/completions", json={"adapter_description": "New task.", "prompt": "x", "max_tokens": 1}
    )
    assert out.status_code == 200
    assert order == (["queued", "stored"] if spare else ["stored", "queued"])
    assert client.get(f"/v1/adapters/{out.json['model']}").status_code == 200


def test_core_to_spare_compares_cpus_with_torch_threads(make_app, monkeypatch):
    runtime = make_app().extensions["hypergen"]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not runtime.core_to_spare
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert runtime.core_to_spare


def test_completions_with_a_description(client, engine):
    body = {
        "adapter_description": "Solve arithmetic.",
        "prompt": ["2 plus 3 is", "7 minus 4 is"],
        "max_tokens": 4,
    }
    out = client.post("/v1/completions", json=body)
    assert out.status_code == 200
    adapter_id = out.json["model"]
    assert adapter_id == engine.adapter_id("Solve arithmetic.")
    assert [c["index"] for c in out.json["choices"]] == [0, 1]
    assert client.get(f"/v1/adapters/{adapter_id}").status_code == 200, "stored for later use by id"
    by_id = client.post(
        "/v1/completions", json={**body, "model": adapter_id, "adapter_description": None}
    )
    assert by_id.json["choices"] == out.json["choices"]
    again = client.post("/v1/completions", json={**body, "model": "base"})
    assert again.json["choices"] == out.json["choices"]
    assert _metric(client, 'hypergen_adapter_lookups_total{source="generated"}') == 1
    assert _metric(client, 'hypergen_adapter_lookups_total{source="memory"}') == 2
    error = _error(
        client.post("/v1/completions", json={**body, "model": "f" * 64}), 400, "another adapter"
    )
    assert error["param"] == "model"


def test_chat_completions(client, engine):
    meta = _adapter(client)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, how are you?"},
    ]
    body = {"model": meta["id"], "messages": messages, "max_tokens": 6}
    out = client.post("/v1/chat/completions", json=body)
    assert out.status_code == 200
    choice = out.json["choices"][0]
    assert out.json["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    ids = engine.tokenize_chat(messages)
    lora = engine.make_adapters([DESCRIPTION])[0]
    expected = engine.complete([Job(ids, lora, SamplingParams(max_tokens=6))])[0]
    assert choice["message"]["content"] == expected.text and out.json["usage"][
        "prompt_tokens"
    ] == len(ids)
    parts = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hello, "},
                {"type": "text", "text": "how are you?"},
            ],
        },
    ]
    same = client.post(
        "/v1/chat/completions", json={**body, "messages": parts, "max_completion_tokens": 6}
    )
    assert same.json["choices"] == out.json["choices"]


def test_stop_sampling_and_seed(client):
    meta = _adapter(client)
    body = {"model": meta["id"], "prompt": "The cat", "max_tokens": 12, "ignore_eos": True}
    full = client.post("/v1/completions", json=body).json["choices"][0]["text"]
    stop = full[3:5]
    assert stop and len(full) > 6
    cut = client.post("/v1/completions", json={**body, "stop": [stop, "never-there"]}).json[
        "choices"
    ][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.index(stop)]
    sampled = {**body, "temperature": 1.5, "top_p": 0.9, "seed": 7}
    first = client.post("/v1/completions", json=sampled).json["choices"][0]["text"]
    assert client.post("/v1/completions", json=sampled).json["choices"][0]["text"] == first
    texts = {
        client.post("/v1/completions", json={**sampled, "seed": s}).json["choices"][0]["text"]
        for s in range(4)
    }
    assert len(texts) > 1, "different seeds must sample differently"


# --- the engine ----------------------------------------------------------------------------------


def test_mixed_batch_equals_each_row_alone(engine, llama, llama_dir, conditioner):
    """Rows with different adapters (other ranks and modules too), none, and different prompt
    lengths and max_tokens: batched output == each row alone == HF generate with core hooks."""
    model, tokenizer = llama
    loras = engine.make_adapters(["Translate English to French.", "Classify sentiment."])
    other = make_generator(model, llama_dir, conditioner, ["v_proj", "down_proj"], rank=2).generate(
        ["x"]
    )
    prompts = [
        "The cat sits",
        "What is 2 plus 3? A:",
        "I loved it. It was a",
        "Hello",
        "Q: What day",
    ]
    adapters = [loras[0], loras[1], None, other, loras[0]]
    jobs = [
        Job(engine.tokenize(p), a, SamplingParams(max_tokens=4 + 3 * i))
        for i, (p, a) in enumerate(zip(prompts, adapters))
    ]
    batched = engine.complete(jobs)
    for job, got in zip(jobs, batched):
        assert got.token_ids == engine.complete([job])[0].token_ids
        assert got.token_ids == hf_greedy(engine, model, tokenizer, job)
        assert got.finish_reason == (
            "length" if len(got.token_ids) == job.params.max_tokens else "stop"
        )


def test_batched_lora_equals_core_hooks(engine, llama):
    model, tokenizer = llama
    lora = engine.generator.generate(["Translate English to French.", "Classify sentiment."])
    batch = tokenizer(
        ["The cat sits on the mat.", "What is 2 plus 3?"], return_tensors="pt", padding=True
    )
    stacked = BatchedLora.stack([lora.select(0), lora.select(1)])
    with torch.inference_mode():
        with apply_adapters(model, lora):
            core = model(**batch).logits
        with apply_adapters(model, stacked):
            ours = model(**batch).logits
    torch.testing.assert_close(ours, core, rtol=1e-5, atol=1e-5)
    assert BatchedLora.stack([None, None]) is None


def test_batched_lora_on_a_bf16_model_keeps_fp32_factors(engine):
    """bf16 models (``DTYPE`` auto on AMX CPUs) get fp32 factors: a decode step's one token per
    row runs the adapter in fp32, a longer input (prefill) in bf16; both add what the fp32
    adapter adds, up to bf16 rounding, and the output stays bf16."""
    lora = engine.generator.generate(["Translate English to French.", "Classify sentiment."])
    stacked = BatchedLora.stack([lora.select(0), lora.select(1)], dtype=torch.bfloat16)
    name = stacked.module_names[0]
    assert stacked.At[name].dtype == torch.float32
    stacked.At[name].normal_(), stacked.Bt[name].normal_(std=0.1)  # an untrained B is zero
    hook = stacked.forward_hook(name)
    i, o = stacked.At[name].shape[1], stacked.Bt[name].shape[2]
    for tokens in (1, 5):  # a decode step, a prefill
        x = torch.randn(2, tokens, i)
        base = torch.randn(2, tokens, o)
        expected = base + torch.bmm(torch.bmm(x, stacked.At[name]), stacked.Bt[name])
        out = hook(None, (x.bfloat16(),), base.bfloat16())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_batcher_windows_caps_and_announcements():
    sizes = []

    def run(jobs):
        sizes.append(len(jobs))
        return [f"done {id(job)}" for job in jobs]

    job = Job([1, 2, 3])
    batcher = Batcher(run, max_batch=2, window_s=0.05, max_wait_s=5.0)
    futures = batcher.submit([job] * 5)
    assert [f.result(timeout=10) for f in futures] == [f"done {id(job)}"] * 5
    assert sizes == [2, 2, 1], "max_batch caps a batch; the rest waits for the next"

    sizes.clear()
    batcher.announce()  # a request is preparing its job
    first = batcher.submit([job])[0]
    time.sleep(0.3)  # well past the window: only the announcement holds the batch open
    second = batcher.submit([job], announced=True)[0]
    first.result(timeout=10)
    second.result(timeout=10)
    assert sizes == [2]

    sizes.clear()
    batcher.announce()
    batcher.withdraw()  # that request failed before submitting: nothing to wait for
    start = time.monotonic()
    batcher.submit([job])[0].result(timeout=10)
    assert sizes == [1] and time.monotonic() - start < 2.0
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([job])


def test_sampling_params_validation():
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": ("",)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="prompt_ids"):
        Job([])


# --- errors --------------------------------------------------------------------------------------


def test_request_errors_are_json(client):
    meta = _adapter(client)
    post = client.post
    _error(post("/v1/adapters", data="{not json"), 400, "valid JSON")
    _error(post("/v1/adapters", json=["a list"]), 400, "JSON object")
    _error(post("/v1/adapters", json={"descripton": "typo"}), 400, "unknown field")
    _error(post("/v1/adapters", json={}), 400, "exactly one")
    _error(
        post("/v1/adapters", json={"description": "a", "descriptions": ["b"]}), 400, "exactly one"
    )
    _error(post("/v1/adapters", json={"description": 3}), 400, "must be a string")
    _error(post("/v1/adapters", json={"description": "   "}), 400, "must not be empty")
    _error(post("/v1/adapters", json={"description": "x" * 2001}), 400, "limit is 2000")
    _error(post("/v1/adapters", json={"description": "a", "dtype": "int8"}), 400, "dtype")
    _error(post("/v1/adapters", json={"descriptions": []}), 400, "non-empty list")
    _error(post("/v1/adapters", json={"descriptions": "one"}), 400, "non-empty list")
    _error(post("/v1/adapters", json={"descriptions": ["a"] * 17}), 400, "limit is 16")
    assert (
        _error(post("/v1/adapters", json={"descriptions": ["a", 5]}), 400, "string")["param"]
        == "descriptions[1]"
    )

    for query in ("limit=0", "limit=101", "limit=abc", "offset=-1"):
        _error(client.get(f"/v1/adapters?{query}"), 400, "query parameter")
    for bad_id in ("zz", "A" * 64, "0" * 63, "%2e%2e", "..%5C..%5Cetc"):
        _error(client.get(f"/v1/adapters/{bad_id}"), 400, "64 lowercase hexadecimal")
        _error(client.delete(f"/v1/adapters/{bad_id}"), 400, "64 lowercase hexadecimal")
        _error(client.get(f"/v1/adapters/{bad_id}/download"), 400, "64 lowercase hexadecimal")
    _error(client.get("/v1/adapters/..%2F..%2Fetc%2Fpasswd"), 404, "not found")  # never routed
    _error(client.get(f"/v1/adapters/{'0' * 64}"), 404, "not found")
    _error(client.get(f"/v1/adapters/{'0' * 64}/download"), 404, "not found")

    ok = {"model": meta["id"], "prompt": "hi", "max_tokens": 2}
    cases = [
        ({"stream": "yes"}, "'stream' must be a boolean"),
        ({"stream_options": {"include_usage": True}}, "needs 'stream': true"),
        ({"stream": True, "stream_options": {"x": 1}}, "include_usage"),
        ({"stream": True, "logprobs": 2}, "not supported with 'stream'"),
        ({"n": 0}, "between 1 and 16"),
        ({"n": 4, "prompt": ["a"] * 5}, "the limit is 16"),
        ({"best_of": 2}, "best_of is not supported"),
        ({"logprobs": 21}, "between 0 and 20"),
        ({"logprobs": True}, "integer"),
        ({"top_logprobs": 2}, "chat/completions"),
        ({"echo": True}, "echo"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"max_tokens": 0}, "between 1 and 512"),
        ({"max_tokens": 513}, "between 1 and 512"),
        ({"max_tokens": "8"}, "integer"),
        ({"max_tokens": True}, "integer"),
        ({"temperature": 3}, r"in \[0.0, 2.0\]"),
        ({"temperature": "hot"}, "number"),
        ({"top_p": 0}, r"in \(0.0, 1.0\]"),
        ({"stop": ["a"] * 5}, "up to 4"),
        ({"stop": [""]}, "non-empty"),
        ({"stop": 3}, "non-empty"),
        ({"stop": "x" * 201}, "at most 200"),
        ({"seed": 1.5}, "integer"),
        ({"ignore_eos": "yes"}, "boolean"),
        ({"prompt": None}, "'prompt'"),
        ({"prompt": []}, "'prompt'"),
        ({"prompt": [1, 2]}, "'prompt'"),
        ({"prompt": ["a"] * 17}, "limit is 16"),
        ({"prompt": ""}, "must not be empty"),
        ({"prompt": "word " * 1100}, "limit is 1024"),
        ({"prompt": "word " * 200, "max_tokens": 100}, "context of 256"),
        ({"model": None}, "'model' is required"),
        ({"model": 5}, "must be a string"),
        ({"adapter_description": ""}, "must not be empty"),
    ]
    for change, pattern in cases:
        error = _error(post("/v1/completions", json={**ok, **change}), 400, pattern)
        assert error["type"] == "invalid_request_error"
    for model in ("0" * 64, "gpt-4", "../../etc/passwd"):
        assert (
            _error(post("/v1/completions", json={**ok, "model": model}), 404, "not found")["code"]
            == "model_not_found"
        )

    chat = {"model": meta["id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for change, pattern in [
        ({"messages": []}, "non-empty list"),
        ({"messages": "hi"}, "non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content' must be a string"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
        ({"max_completion_tokens": 999}, "between 1 and 512"),
        ({"tools": [{"type": "function"}]}, "tools"),
    ]:
        _error(post("/v1/chat/completions", json={**chat, **change}), 400, pattern)

    assert _error(client.put("/v1/adapters"), 405, "not allowed")["code"] == "method_not_allowed"
    _error(client.get("/v2/nothing"), 404, "not found")
    _error(client.get("/v1/completions"), 405, "not allowed")


def test_body_too_large_is_413(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    error = _error(
        client.post("/v1/adapters", json={"description": "x" * 2000}), 413, "limit is 1000 bytes"
    )
    assert error["code"] == "request_entity_too_large"


def test_api_keys(make_app):
    client = make_app(API_KEYS="key-one, key-two").test_client()
    body = {"description": DESCRIPTION}
    error = _error(client.post("/v1/adapters", json=body), 401, "API key")
    assert error["type"] == "authentication_error"
    assert client.post("/v1/adapters", json=body).headers["WWW-Authenticate"].startswith("Bearer")
    _error(
        client.post("/v1/adapters", json=body, headers={"Authorization": "Bearer wrong"}),
        401,
        "API key",
    )
    _error(client.get("/v1/adapters", headers={"Authorization": "key-one"}), 401, "API key")
    assert (
        client.post(
            "/v1/adapters", json=body, headers={"Authorization": "Bearer key-two"}
        ).status_code
        == 201
    )
    assert client.get("/v1/adapters", headers={"X-API-Key": "key-one"}).status_code == 200
    _error(client.get(f"/v1/adapters/{'0' * 64}"), 401, "API key")  # auth comes before lookups
    for open_path in ("/healthz", "/metrics", "/openapi.json", "/"):
        assert client.get(open_path).status_code == 200
    assert client.get("/healthz").json["auth_required"] is True


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_overload_timeout_and_failure(make_app, engine, monkeypatch, batching):
    busy = make_app(MAX_QUEUE=1, BATCHING=batching).test_client()
    body = {"model": "base", "prompt": ["a", "b"], "max_tokens": 2}
    error = _error(busy.post("/v1/completions", json=body), 503, "busy")
    assert busy.post("/v1/completions", json=body).headers["Retry-After"] == "1"
    assert error["type"] == "overloaded_error"

    def slow(forward):
        return lambda *args: time.sleep(0.3) or forward(*args)

    patch_decoders(monkeypatch, engine, forward=slow)
    slow_app = make_app(REQUEST_TIMEOUT_S=0.05, BATCHING=batching).test_client()
    _error(slow_app.post("/v1/completions", json={**body, "prompt": "a"}), 504, "longer than")

    def boom(forward):
        def failing(*args):
            raise RuntimeError("kaput")

        return failing

    monkeypatch.undo()
    patch_decoders(monkeypatch, engine, forward=boom)
    broken = make_app(BATCHING=batching).test_client()
    error = _error(
        broken.post("/v1/completions", json={**body, "prompt": "a"}), 500, "RuntimeError"
    )
    assert error["type"] == "server_error"
    monkeypatch.undo()
    assert broken.post("/v1/completions", json={**body, "prompt": "a"}).status_code == 200, (
        "the worker survives"
    )


def test_incompatible_stored_adapter_is_422(client, gpt2_generator):
    """An adapter in the store made for another architecture is refused with a clear message."""
    store = client.application.extensions["hypergen"].store
    adapter_id = "ab" * 32
    lora = gpt2_generator.generate(["x"])
    store.put(
        adapter_id,
        {"object": "adapter", "base_model": "gpt2"},
        lambda f: gpt2_generator.save_peft(lora, f),
    )
    error = _error(
        client.post("/v1/completions", json={"model": adapter_id, "prompt": "hi"}),
        422,
        "does not fit",
    )
    assert error["code"] == "adapter_incompatible"


def test_missing_checkpoint_is_unhealthy(make_app, tmp_path):
    client = make_app(engine=None, CHECKPOINT=str(tmp_path / "nope")).test_client()
    error = _error(client.get("/healthz"), 503, "does not exist")
    assert error["code"] == "not_ready"
    body = {"model": "base", "prompt": "hi"}
    assert (
        _error(client.post("/v1/completions", json=body), 503, "failed to load")["code"]
        == "not_ready"
    )


# --- health, metrics, page, OpenAPI ----------------------------------------------------------------


def test_healthz(client, engine):
    health = client.get("/healthz").json
    assert health["status"] == "ok" and health["untrained"] is False and "warning" not in health
    assert health["checkpoint"]["hash"] == engine.checkpoint_hash
    assert health["lora"]["rank"] == 4 and health["limits"]["max_tokens"] == 512


def test_untrained_checkpoint_is_labelled(
    make_app, llama, llama_dir, conditioner, tmp_path, monkeypatch
):
    """With no checkpoint configured and none shipped, an untrained one is built and labelled."""
    made = []

    def fake_init_checkpoint(out: str, **_):  # the real one builds SmolLM2 + MiniLM
        made.append(out)
        return AdapterGenerator.create(llama[0], llama_dir, conditioner, ENCODER).save_pretrained(
            out
        )

    monkeypatch.setattr("service.engine.DEFAULT_CHECKPOINT", tmp_path / "not-shipped")
    monkeypatch.setattr("hypergen.generator.init_checkpoint", fake_init_checkpoint)
    folder = resolve_checkpoint(None, home=tmp_path / "home")
    assert (
        folder == tmp_path / "home" / "checkpoints" / "untrained-smollm2-minilm" and len(made) == 1
    )
    assert resolve_checkpoint(None, home=tmp_path / "home") == folder and len(made) == 1, (
        "built once"
    )
    shipped = tmp_path / "shipped"
    (shipped).mkdir()
    (shipped / CONFIG_NAME).write_text("{}")
    monkeypatch.setattr("service.engine.DEFAULT_CHECKPOINT", shipped)
    assert resolve_checkpoint(None, home=tmp_path / "home") == shipped, "a trained default wins"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "typo")

    client = make_app(engine=Engine.load(folder)).test_client()
    health = client.get("/healthz").json
    assert health["untrained"] is True and "UNTRAINED" in health["warning"]
    meta = _adapter(client)
    assert meta["untrained"] is True and "UNTRAINED" in meta["warning"]
    body = {"prompt": "The cat sits", "max_tokens": 6, "ignore_eos": True}
    with_adapter = client.post("/v1/completions", json={**body, "model": meta["id"]}).json[
        "choices"
    ]
    assert (
        with_adapter
        == client.post("/v1/completions", json={**body, "model": "base"}).json["choices"]
    )


def test_metrics_prometheus_text(client):
    meta = _adapter(client)
    client.post(
        "/v1/completions",
        json={"model": meta["id"], "prompt": "hi", "max_tokens": 3, "ignore_eos": True},
    )
    client.get(f"/v1/adapters/{'0' * 64}")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith(
        "text/plain; version=0.0.4"
    )
    text = response.data.decode()
    for name in (
        "hypergen_requests_total",
        "hypergen_request_duration_seconds",
        "hypergen_batch_size",
        "hypergen_adapter_lookups_total",
        "hypergen_tokens_total",
        "hypergen_queue_jobs",
        "hypergen_prefill_size",
        "hypergen_running_jobs",
    ):
        assert f"# TYPE {name} " in text
    # prometheus_client writes labels in name order
    assert 'hypergen_requests_total{method="POST",route="/v1/completions",status="200"} 1.0' in text
    assert (
        'hypergen_requests_total{method="GET",route="/v1/adapters/<adapter_id>",status="404"} 1.0'
        in text
    )
    assert 'hypergen_tokens_total{kind="completion"} 3.0' in text
    assert 'hypergen_prefill_size_bucket{le="1.0"} 1.0' in text
    assert "hypergen_prefill_size_count 1.0" in text
    # continuous batching: one observation per decode step (3 tokens: 3 steps) of 1 row
    assert 'hypergen_batch_size_bucket{le="1.0"} 3.0' in text
    assert "hypergen_batch_size_count 3.0" in text
    assert "hypergen_running_jobs 0.0" in text
    assert 'hypergen_adapter_lookups_total{source="generated"} 1.0' in text
    assert "hypergen_adapter_cache_entries 1.0" in text
    for line in text.splitlines():  # every sample line parses: name{labels} value
        assert line.startswith("#") or re.fullmatch(
            r"[a-z_]+(\{[^}]*\})? [0-9.e+-]+|[a-z_]+\{.*\} \+Inf", line
        ), line


def test_each_app_has_its_own_metrics_registry(make_app):
    first, second = make_app().test_client(), make_app().test_client()
    for _ in range(3):
        first.get("/healthz")
    second.get("/healthz")
    line = 'hypergen_requests_total{method="GET",route="/healthz",status="200"}'
    assert _metric(first, line) == 3 and _metric(second, line) == 1


def test_page_and_openapi(client):
    page = client.get("/")
    assert (
        page.status_code == 200
        and b'id="description"' in page.data
        and b"/static/app.js" in page.data
    )
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json")  # what it holds: tests/test_openapi.py
    assert spec.status_code == 200 and spec.json["openapi"].startswith("3.")


# --- store ---------------------------------------------------------------------------------------


def test_store_survives_a_restart(tmp_path, engine):
    store = AdapterStore(tmp_path / "s", cache_size=2)
    lora = engine.make_adapters(["a"])[0]
    ids = [f"{i:064x}" for i in range(3)]
    for adapter_id in ids:
        record, created = store.put(
            adapter_id, {"n": adapter_id}, lambda f: engine.save_adapter(lora, f, "float32", {})
        )
        assert created and record["id"] == adapter_id
    assert store.put(ids[0], {}, lambda f: pytest.fail("must not rewrite"))[1] is False
    assert store.weights(ids[0])[1] == "disk" and store.weights(ids[0])[1] == "memory"
    assert len(store.cache) == 1
    store.delete(ids[2])
    store.close()

    # a crash left a folder without a row, and a row lost its folder
    orphan = tmp_path / "s" / "adapters" / ("f" * 64)
    orphan.mkdir()
    import shutil

    shutil.rmtree(tmp_path / "s" / "adapters" / ids[1])
    reopened = AdapterStore(tmp_path / "s")
    records, total = reopened.list()
    assert total == 1 and records[0]["id"] == ids[0] and records[0]["n"] == ids[0]
    assert reopened.get(ids[1]) is None and reopened.weights(ids[1]) == (None, "missing")
    lora_back, source = reopened.weights(ids[0])
    assert source == "disk" and torch.equal(
        lora_back.A[lora.module_names[0]], lora.A[lora.module_names[0]]
    )
    # the orphan (a folder without a row: a writer killed before its commit) is swept at open
    assert reopened.get("f" * 64) is None
    assert reopened.put("f" * 64, {}, lambda f: engine.save_adapter(lora, f, "float32", {}))[1]
    assert (orphan / "adapter_config.json").is_file()
    assert reopened.get("../x") is None and reopened.delete("../x") is False
    reopened.close()


def test_lru_cache_is_bounded():
    cache = LRUCache(2)
    for key in "abc":
        cache.put(key, key)
    assert len(cache) == 2 and cache.get("a") is None
    cache.get("b")
    cache.put("d", "d")
    assert cache.get("b") == "b" and cache.get("c") is None


# --- configuration and server ------------------------------------------------------------------


def test_config_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERGEN_MAX_TOKENS", "99")
    monkeypatch.setenv("HYPERGEN_API_KEYS", "a,b")
    (tmp_path / "c.json").write_text(json.dumps({"MAX_BATCH": 4, "MAX_TOKENS": 7}))
    (tmp_path / "c.toml").write_text("MAX_BATCH = 5\n")
    app = create_app(overrides={"CONFIG_FILE": str(tmp_path / "c.json"), "LRU_SIZE": 3})
    assert app.config["MAX_BATCH"] == 4 and app.config["MAX_TOKENS"] == 99, "env overrides the file"
    assert app.config["API_KEYS"] == ["a", "b"] and app.config["LRU_SIZE"] == 3
    monkeypatch.setenv("HYPERGEN_CONFIG_FILE", str(tmp_path / "c.toml"))
    assert create_app().config["MAX_BATCH"] == 5
    assert (
        "hypergen" in create_app().extensions
        and not create_app().extensions["hypergen"].engine_loaded
    )
    with pytest.raises(ValueError, match="MAX_BATCH"):
        create_app({"MAX_BATCH": 0})
    with pytest.raises(ValueError, match="DEFAULT_MAX_TOKENS"):
        create_app({"MAX_TOKENS": 8})
    with pytest.raises(ValueError, match="API_KEYS"):
        create_app({"API_KEYS": [3]})
    with pytest.raises(ValueError, match="PACKED_LINEAR"):
        create_app({"PACKED_LINEAR": "yes"})
    monkeypatch.setenv("HYPERGEN_PACKED_LINEAR", "false")  # JSON in the environment
    assert create_app().config["PACKED_LINEAR"] is False


def test_server_main(tmp_path, capsys):
    from service.server import main, overrides_from, parse_args

    args = parse_args(
        [
            "--port",
            "0",
            "--checkpoint",
            "ck",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--max-batch",
            "8",
            "--batching",
            "window",
        ]
    )
    assert overrides_from(args) == {
        "CHECKPOINT": "ck",
        "API_KEYS": ["k1", "k2"],
        "MAX_BATCH": 8,
        "BATCHING": "window",
    }
    assert main(["--checkpoint", str(tmp_path / "missing"), "--store", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err
