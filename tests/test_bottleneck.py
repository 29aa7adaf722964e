"""The bottleneck adapter kind on tiny models: math, hypernetwork shapes, per-example hooks,
zero-init no-op, checkpoint, AdapterHub-format export/reload, and a 2-step meta-training run.
(``tests/test_adapterhub.py``, slow, checks the export against a real ``adapters`` install.)"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from hypergen import (
    AdapterGenerator,
    BottleneckSpec,
    BottleneckWeights,
    HyperNetConfig,
    apply_adapters,
    bottleneck_delta,
    find_block_targets,
    load_adapterhub,
    load_checkpoint,
)
from hypergen.adapters.adapterhub import CONFIG_NAME, WEIGHTS_NAME
from tests.conftest import hf_greedy, make_bottleneck_generator
from tests.test_training import run_meta_train, toy  # noqa: F401 (toy is a fixture)

DESCRIPTIONS = [
    "Answer questions about dates.",
    "Translate English to French.",
    "Classify sentiment.",
]
TEXTS = ("The cat sits on the mat.", "What is 2 plus 3?", "I loved it.")


@pytest.fixture(params=["houlsby", "pfeiffer"])
def llama_bottleneck(request, llama, llama_dir, conditioner) -> AdapterGenerator:
    return make_bottleneck_generator(llama[0], llama_dir, conditioner, placement=request.param)


def _inputs(tokenizer, texts=TEXTS):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


# --- math and shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "tanh"])
def test_bottleneck_delta_matches_linear_layers(act):
    torch.manual_seed(0)
    down, up = nn.Linear(16, 4), nn.Linear(4, 16)
    fn = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), "tanh": nn.Tanh()}[act]
    h = torch.randn(1, 5, 16)
    expected = up(fn(down(h)))
    got = bottleneck_delta(
        h, down.weight[None], down.bias[None], up.weight[None], up.bias[None], act
    )
    torch.testing.assert_close(got, expected)
    # a batch of two adapters: row k uses adapter k
    h2 = torch.randn(2, 3, 16)
    d2, u2 = torch.randn(2, 4, 16), torch.randn(2, 16, 4)
    db, ub = torch.randn(2, 4), torch.randn(2, 16)
    both = bottleneck_delta(h2, d2, db, u2, ub, act)
    for k in range(2):
        torch.testing.assert_close(
            both[k : k + 1],
            bottleneck_delta(
                h2[k : k + 1], d2[k : k + 1], db[k : k + 1], u2[k : k + 1], ub[k : k + 1], act
            ),
        )


def test_hypernetwork_emits_bottleneck_shapes(llama, llama_dir, conditioner):
    for placement, blocks in (("houlsby", ["self_attn", "mlp"]), ("pfeiffer", ["mlp"])):
        generator = make_bottleneck_generator(llama[0], llama_dir, conditioner, placement=placement)
        weights = generator.generate(DESCRIPTIONS)
        assert isinstance(weights, BottleneckWeights) and len(weights) == 3 and weights.size == 8
        assert weights.module_names == [f"model.layers.{i}.{b}" for i in range(2) for b in blocks]
        name = weights.module_names[0]
        shapes = [
            tuple(getattr(weights, f)[name].shape) for f in ("down", "down_bias", "up", "up_bias")
        ]
        assert shapes == [(3, 8, 64), (3, 8), (3, 64, 8), (3, 64)]  # hidden 64, bottleneck 8
        assert set(generator.hypernet.heads) == set(blocks)


def test_block_targets_clear_errors(llama, gpt2):
    with pytest.raises(ValueError, match="linear layer"):
        find_block_targets(llama[0], ["q_proj"])
    with pytest.raises(ValueError, match="'attn' not found"):
        find_block_targets(llama[0], ["attn"])
    targets = find_block_targets(gpt2[0], ["attn", "mlp"])  # GPT-2's block names
    assert [(t.name, t.in_features) for t in targets[:2]] == [
        ("transformer.h.0.attn", 64),
        ("transformer.h.0.mlp", 64),
    ]
    with pytest.raises(ValueError, match="placement"):
        BottleneckSpec(placement="sideways")
    with pytest.raises(ValueError, match="adapter_kind"):
        HyperNetConfig(adapter_kind="prefix")


# --- on-the-fly application --------------------------------------------------------------------


def test_untrained_bottleneck_is_a_no_op(llama, llama_dir, conditioner):
    model, tokenizer = llama
    generator = make_bottleneck_generator(
        llama[0], llama_dir, conditioner, randomize=False, placement="houlsby"
    )
    weights = generator.generate(DESCRIPTIONS)
    assert all(v.abs().max() == 0 for f in (weights.up, weights.up_bias) for v in f.values())
    with torch.no_grad():
        base = model(**_inputs(tokenizer)).logits
        with apply_adapters(model, weights):
            adapted = model(**_inputs(tokenizer)).logits
    assert torch.equal(base, adapted)


def test_mixed_batch_equals_each_row_alone(llama, llama_bottleneck):
    model, tokenizer = llama
    weights = llama_bottleneck.generate(DESCRIPTIONS)
    with torch.no_grad(), apply_adapters(model, weights):
        batched = model(**_inputs(tokenizer)).logits
    for i, text in enumerate(TEXTS):
        single = tokenizer([text], return_tensors="pt")
        n = single.input_ids.shape[1]
        with torch.no_grad(), apply_adapters(model, weights.select(i)):
            alone = model(**single).logits
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        base = model(**_inputs(tokenizer)).logits
    assert (batched - base).abs().max() > 1e-3, "the adapters must change the output"
    assert all(not m._forward_hooks for m in model.modules())
    # one adapter for the whole batch is broadcast
    with torch.no_grad(), apply_adapters(model, weights.select(0)):
        shared = model(**_inputs(tokenizer)).logits
    single = tokenizer([TEXTS[0]], return_tensors="pt")
    torch.testing.assert_close(
        shared[0, : single.input_ids.shape[1]],
        batched[0, : single.input_ids.shape[1]],
        atol=1e-5,
        rtol=1e-5,
    )


def test_gpt2_attention_tuple_output(gpt2, gpt2_dir, conditioner):
    model, tokenizer = gpt2
    generator = make_bottleneck_generator(
        model, gpt2_dir, conditioner, placement="houlsby", attention_module="attn"
    )
    weights = generator.generate(DESCRIPTIONS[:2])
    with torch.no_grad():
        base = model(**_inputs(tokenizer, TEXTS[:2])).logits
        with apply_adapters(model, weights):
            adapted = model(**_inputs(tokenizer, TEXTS[:2])).logits
        with apply_adapters(model, weights.select(1)):
            alone = model(**tokenizer([TEXTS[1]], return_tensors="pt")).logits
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(adapted[1, : alone.shape[1]], alone[0], atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_bottleneck_heads(llama, llama_dir, conditioner):
    model, tokenizer = llama
    generator = make_bottleneck_generator(model, llama_dir, conditioner, randomize=False)
    hypernet = generator.hypernet.train()
    weights = hypernet(generator.encode(DESCRIPTIONS[:2]))
    batch = _inputs(tokenizer, TEXTS[:2])
    with apply_adapters(model, weights):
        loss = model(**batch, labels=batch.input_ids).loss
    loss.backward()
    # from zero, only the up head gets a gradient on the first step (as LoRA's B)
    head = hypernet.heads["mlp"]
    assert head.to_up.weight.grad.abs().sum() > 0 and head.to_up_bias.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


# --- checkpoint and export ---------------------------------------------------------------------


def test_checkpoint_records_kind_and_round_trips(llama, llama_dir, conditioner, tmp_path):
    generator = make_bottleneck_generator(
        llama[0], llama_dir, conditioner, placement="houlsby", non_linearity="gelu"
    )
    folder = generator.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((folder / "hypernet_config.json").read_text())["hypernet"]
    assert saved["adapter_kind"] == "bottleneck"
    assert saved["bottleneck"] == {
        "size": 8,
        "placement": "houlsby",
        "non_linearity": "gelu",
        "attention_module": "self_attn",
        "mlp_module": "mlp",
    }
    loaded = AdapterGenerator.from_pretrained(folder, conditioner=conditioner, base_model=llama[0])
    a, b = generator.generate(DESCRIPTIONS), loaded.generate(DESCRIPTIONS)
    assert isinstance(b, BottleneckWeights) and b.non_linearity == "gelu"
    assert all(
        torch.equal(a.up[k], b.up[k]) and torch.equal(a.down_bias[k], b.down_bias[k])
        for k in a.module_names
    )
    # a checkpoint written before the bottleneck kind (no adapter_kind key) is a LoRA checkpoint
    del saved["adapter_kind"], saved["bottleneck"]
    assert HyperNetConfig.from_dict(saved).adapter_kind == "lora"


def test_lora_checkpoint_loads_unchanged():
    from hypergen.checkpoint import DEFAULT_CHECKPOINT

    hypernet, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    assert hypernet.config.adapter_kind == "lora" and set(hypernet.heads) == {"q_proj", "v_proj"}


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 5e-2)])
def test_export_reload_gives_equal_logits(llama, llama_bottleneck, tmp_path, dtype, atol):
    model, tokenizer = llama
    weights = llama_bottleneck.generate(DESCRIPTIONS[:1])
    folder = llama_bottleneck.save_adapter(weights, tmp_path / "adapter", dtype=dtype)
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    keys = load_file(folder / WEIGHTS_NAME).keys()
    assert "model.layers.1.output_adapters.adapters.hypergen.adapter_down.0.weight" in keys
    assert "model.layers.1.output_adapters.adapters.hypergen.adapter_up.bias" in keys
    config = json.loads((folder / CONFIG_NAME).read_text())
    houlsby = llama_bottleneck.hypernet.config.bottleneck.placement == "houlsby"
    assert (config["config"]["mh_adapter"], config["config"]["output_adapter"]) == (houlsby, True)
    assert config["config"]["reduction_factor"] == 64 / 8 and config["hidden_size"] == 64
    reloaded, _ = load_adapterhub(folder)
    assert (
        reloaded.module_names == weights.module_names
        and reloaded.non_linearity == weights.non_linearity
    )
    batch = _inputs(tokenizer, TEXTS[:1])
    with torch.no_grad():
        with apply_adapters(model, weights):
            expected = model(**batch).logits
        with apply_adapters(model, reloaded):
            got = model(**batch).logits
    assert (got - expected).abs().max().item() <= atol
    with pytest.raises(ValueError, match="one adapter"):
        llama_bottleneck.save_adapter(llama_bottleneck.generate(DESCRIPTIONS[:2]), tmp_path / "two")
    with pytest.raises(TypeError, match="save_adapter"):
        llama_bottleneck.save_peft(weights, tmp_path / "peft")


def test_loader_refuses_what_it_does_not_implement(llama, llama_dir, conditioner, tmp_path):
    generator = make_bottleneck_generator(llama[0], llama_dir, conditioner)
    folder = generator.save_adapter(generator.generate(DESCRIPTIONS[:1]), tmp_path / "adapter")
    config_path = folder / CONFIG_NAME
    original = json.loads(config_path.read_text())

    def with_config(**changes) -> Path:
        config_path.write_text(
            json.dumps({**original, "config": {**original["config"], **changes}})
        )
        return folder

    # AdapterHub's own Pfeiffer config reads the residual stream after the add: refused
    with pytest.raises(ValueError, match="original_ln_before=True"):
        load_adapterhub(with_config(original_ln_before=True))
    with pytest.raises(ValueError, match="ln_after"):
        load_adapterhub(with_config(ln_after=True))
    with pytest.raises(ValueError, match="lora adapter"):
        load_adapterhub(with_config(architecture="lora"))
    with pytest.raises(ValueError, match="non_linearity"):
        load_adapterhub(with_config(non_linearity="softplus"))
    with pytest.raises(ValueError, match="config enables"):
        load_adapterhub(with_config(mh_adapter=True))  # no attention weights in the file
    with_config()
    tensors = load_file(folder / WEIGHTS_NAME)
    tensors["model.layers.0.something.weight"] = torch.zeros(1)
    save_file(tensors, folder / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="unexpected key"):
        load_adapterhub(folder)
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="pickled"):
        load_adapterhub(folder)


# --- meta-training -----------------------------------------------------------------------------


def test_meta_training_smoke_run_bottleneck(toy, tmp_path):  # noqa: F811 (toy is the fixture)
    trainer = run_meta_train(
        toy, tmp_path / "run", adapter_kind="bottleneck", placement="houlsby", bottleneck_size=4
    )
    final = tmp_path / "run" / "final"
    generator = AdapterGenerator.from_pretrained(final)
    assert generator.meta.trained_steps == 2
    assert generator.hypernet.config.adapter_kind == "bottleneck"
    weights = generator.generate(["Toy task 4: answer with a word about the day."])
    assert isinstance(weights, BottleneckWeights) and weights.size == 4
    # two SFT steps moved the zero-initialised up head: adapters are no longer no-ops
    assert max(v.abs().max().item() for v in weights.up.values()) > 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    report = generator.meta.training["final_heldout"]
    assert report["generated"]["loss"] > 0 and report["specificity"] == {}
    assert not any(p.requires_grad for p in trainer.model.parameters())


def test_bottleneck_reconstruction_is_refused(toy, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="LoRA-only"):
        run_meta_train(toy, tmp_path / "run", adapter_kind="bottleneck", objective="both")


def test_cli_generate_writes_adapterhub_folders(llama, llama_dir, conditioner, tmp_path, capsys):
    from hypergen.cli import main

    generator = make_bottleneck_generator(llama[0], llama_dir, conditioner)
    checkpoint = generator.save_pretrained(tmp_path / "ckpt")
    args = ["generate", "--checkpoint", str(checkpoint)]
    out = tmp_path / "out"
    assert main([*args, DESCRIPTIONS[0], "-o", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    weights, config = load_adapterhub(out)
    assert config["hypergen"]["adapter_kind"] == "bottleneck" and weights.size == 8
    expected = generator.generate(DESCRIPTIONS[:1])
    assert all(torch.equal(weights.up[k], expected.up[k]) for k in expected.module_names)
    # a rerun replaces its own earlier AdapterHub folder (no --overwrite needed) ...
    assert main([*args, DESCRIPTIONS[1], "-o", str(out)]) == 0
    capsys.readouterr()
    again, _ = load_adapterhub(out)
    name = expected.module_names[0]
    assert not torch.equal(again.up[name], weights.up[name])
    # ... but not a folder holding anything else (a PEFT folder is not this kind's output)
    (out / "notes.txt").write_text("mine")
    assert main([*args, DESCRIPTIONS[0], "-o", str(out)]) == 2
    assert "not an AdapterHub adapter folder" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    # several descriptions: one AdapterHub folder each, made in one batch
    assert main([*args, *DESCRIPTIONS, "-o", str(tmp_path / "many")]) == 0
    folders = capsys.readouterr().out.split()
    assert len(folders) == 3 and folders[1].endswith("001-translate-english-to-french")
    batch = generator.generate(DESCRIPTIONS)
    for k, folder in enumerate(folders):
        written, _ = load_adapterhub(folder)
        torch.testing.assert_close(written.down[name][0], batch.down[name][k])


# --- the service -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bottleneck_engine(bottleneck_checkpoint_dir):
    from service.engine import Engine

    return Engine.load(bottleneck_checkpoint_dir)


def _logits(model, batch, weights=None):
    with torch.no_grad():
        if weights is None:
            return model(**batch).logits
        with apply_adapters(model, weights):
            return model(**batch).logits


def test_service_round_trip(make_app, bottleneck_engine, bottleneck_checkpoint_dir, tmp_path):
    """Create (stored as AdapterHub), read, download (loads with the AdapterHub loader, same
    logits as on the fly), complete with it, delete; the documented shapes hold."""
    from pydantic import TypeAdapter

    from service import schemas

    engine, model, tokenizer = (
        bottleneck_engine,
        bottleneck_engine.model,
        bottleneck_engine.tokenizer,
    )
    client = make_app(engine=engine).test_client()
    health = client.get("/healthz").json
    assert health["adapter_kind"] == "bottleneck" and "lora" not in health
    assert health["bottleneck"] == {
        "size": 8,
        "placement": "houlsby",
        "non_linearity": "relu",
        "target_modules": ["self_attn", "mlp"],
        "dtype": "float32",
    }
    schemas.Health.model_validate(health)

    created = client.post("/v1/adapters", json={"description": DESCRIPTIONS[0]})
    assert created.status_code == 201, created.json
    meta = created.json
    assert (meta["adapter_kind"], meta["format"]) == ("bottleneck", "adapterhub")
    assert meta["bottleneck"] == health["bottleneck"] and "lora" not in meta
    assert isinstance(TypeAdapter(schemas.Adapter).validate_python(meta), schemas.BottleneckAdapter)
    again = client.post("/v1/adapters", json={"description": f"  {DESCRIPTIONS[0]} "})
    assert again.status_code == 200 and again.json["id"] == meta["id"]
    assert client.get(f"/v1/adapters/{meta['id']}").json["format"] == "adapterhub"
    listed = client.get("/v1/adapters").json["data"]
    assert [a["id"] for a in listed] == [meta["id"]]

    archive = client.get(f"/v1/adapters/{meta['id']}/download")
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
        assert z.namelist() == [CONFIG_NAME, WEIGHTS_NAME]
        z.extractall(tmp_path / "download")
    downloaded, config = load_adapterhub(tmp_path / "download")
    assert config["hypergen"]["adapter_kind"] == "bottleneck"
    with safe_open(tmp_path / "download" / WEIGHTS_NAME, "pt") as f:
        header = f.metadata()
    assert header["hypergen_id"] == meta["id"] and header["hypergen_condition"] == DESCRIPTIONS[0]
    expected = AdapterGenerator.from_pretrained(bottleneck_checkpoint_dir).generate(
        DESCRIPTIONS[:1]
    )
    for name in expected.module_names:
        assert torch.equal(downloaded.up[name], expected.up[name])
        assert torch.equal(downloaded.down_bias[name], expected.down_bias[name])
    batch = _inputs(tokenizer, TEXTS[:2])
    on_the_fly = _logits(model, batch, engine.make_adapters([DESCRIPTIONS[0]])[0])
    torch.testing.assert_close(_logits(model, batch, downloaded), on_the_fly, rtol=0, atol=1e-6)
    assert (on_the_fly - _logits(model, batch)).abs().max() > 1e-3, "the adapter must matter"

    # completions apply it: the answer is what greedy decoding with the library's hooks gives
    prompt = "The cat sits"
    body = {"model": meta["id"], "prompt": prompt, "max_tokens": 6, "ignore_eos": True}
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 200 and answer.json["model"] == meta["id"]
    ids = torch.tensor([engine.tokenize(prompt)])
    with torch.no_grad(), apply_adapters(model, downloaded):
        reference = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
        )[0, ids.shape[1] :]
    assert answer.json["choices"][0]["text"] == engine.detokenize(reference.tolist())
    # the same through adapter_description (made and stored on the fly): the same id and text
    by_description = {k: v for k, v in body.items() if k != "model"}
    by_description["adapter_description"] = DESCRIPTIONS[0]
    same = client.post("/v1/completions", json=by_description).json
    assert same["model"] == meta["id"] and same["choices"] == answer.json["choices"]

    # bfloat16: stored as bf16, served as downloaded
    half = client.post("/v1/adapters", json={"description": DESCRIPTIONS[1], "dtype": "bfloat16"})
    store = client.application.extensions["hypergen"].store
    saved = load_file(store.folder(half.json["id"]) / WEIGHTS_NAME)
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    body = {"model": half.json["id"], "prompt": prompt, "max_tokens": 6, "ignore_eos": True}
    hot = client.post("/v1/completions", json=body).json["choices"]
    store.cache.pop(half.json["id"])  # now read back from the AdapterHub folder
    assert client.post("/v1/completions", json=body).json["choices"] == hot

    assert client.delete(f"/v1/adapters/{meta['id']}").status_code == 200
    assert client.get(f"/v1/adapters/{meta['id']}/download").status_code == 404


def test_service_mixed_batch_equals_each_row_alone(
    bottleneck_engine, llama, llama_dir, conditioner, checkpoint_dir
):
    """Rows with different bottleneck adapters (another width, placement and non-linearity too),
    a LoRA, none, different prompt lengths and max_tokens: batched output == each row alone ==
    HF generate with the library's hooks; base rows are untouched bit for bit."""
    from hypergen.decoding import Job, SamplingParams
    from service.batched import stack
    from service.batched_bottleneck import BatchedBottleneck

    engine = bottleneck_engine
    model, tokenizer = llama
    ours = engine.make_adapters([DESCRIPTIONS[0], DESCRIPTIONS[1]])
    other = make_bottleneck_generator(
        model, llama_dir, conditioner, size=4, placement="pfeiffer", non_linearity="gelu"
    ).generate(["x"])
    lora = AdapterGenerator.from_pretrained(checkpoint_dir).generate(["y"])
    prompts = ["The cat sits", "What is 2 plus 3? A:", "I loved it. It was a", "Hello", "Q: What"]
    adapters = [ours[0], ours[1], None, other, lora, ours[0]]
    prompts.append("Translate: the dog")
    jobs = [
        Job(engine.tokenize(p), a, SamplingParams(max_tokens=4 + 2 * i))
        for i, (p, a) in enumerate(zip(prompts, adapters))
    ]
    batched = engine.complete(jobs)
    for job, got in zip(jobs, batched):
        assert got.token_ids == engine.complete([job])[0].token_ids
        assert got.token_ids == hf_greedy(engine, model, tokenizer, job)

    # one forward pass: each row's logits are its adapter's (library hooks), base rows exact
    texts = ["The cat sits on the mat.", "What is 2 plus 3?", "I loved it.", "Hello there"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    rows = [ours[0], None, other, lora]
    with torch.inference_mode(), apply_adapters(model, stack(rows)):
        mixed = model(**batch).logits
    for i, adapter in enumerate(rows):
        alone = _logits(model, {k: v[i : i + 1] for k, v in batch.items()}, adapter)
        if adapter is None:
            assert torch.equal(mixed[i], alone[0]), "a base row is untouched"
        else:
            torch.testing.assert_close(mixed[i], alone[0], rtol=1e-5, atol=1e-5)
    assert BatchedBottleneck.stack([None, None]) is None and stack([None]) is None


def test_service_kinds_share_a_store(make_app, bottleneck_engine, engine):
    """A store written by a bottleneck checkpoint's service serves those adapters to a LoRA
    checkpoint's service (and the other way round): adapters are tensors of their own kind."""
    bottleneck = make_app(engine=bottleneck_engine).test_client()
    lora = make_app(engine=engine).test_client()  # the same store folder
    made_b = bottleneck.post("/v1/adapters", json={"description": DESCRIPTIONS[0]}).json
    made_l = lora.post("/v1/adapters", json={"description": DESCRIPTIONS[0]}).json
    assert (made_b["format"], made_l["format"]) == ("adapterhub", "peft-lora")
    assert made_b["id"] != made_l["id"], "ids cover the checkpoint"
    body = {"prompt": ["The cat", "Hello"], "max_tokens": 4, "ignore_eos": True}
    for client in (bottleneck, lora):
        listed = {a["id"]: a["adapter_kind"] for a in client.get("/v1/adapters").json["data"]}
        assert listed == {made_b["id"]: "bottleneck", made_l["id"]: "lora"}
        answers = [
            client.post("/v1/completions", json={**body, "model": m["id"]}).json["choices"]
            for m in (made_b, made_l)
        ]
        assert all(len(a) == 2 for a in answers)
        archive = client.get(f"/v1/adapters/{made_b['id']}/download")
        with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
            assert z.namelist() == [CONFIG_NAME, WEIGHTS_NAME]
    own = bottleneck.post("/v1/completions", json={**body, "model": made_b["id"]}).json
    other = lora.post("/v1/completions", json={**body, "model": made_b["id"]}).json
    assert own["choices"] == other["choices"], "the same adapter gives the same answers"


def test_incompatible_stored_bottleneck_adapter_is_422(
    make_app, bottleneck_engine, gpt2, gpt2_dir, conditioner
):
    """A bottleneck adapter in the store made for another architecture: a clear 422."""
    client = make_app(engine=bottleneck_engine).test_client()
    store = client.application.extensions["hypergen"].store
    generator = make_bottleneck_generator(gpt2[0], gpt2_dir, conditioner, attention_module="attn")
    weights = generator.generate(["x"])
    adapter_id = "cd" * 32
    store.put(
        adapter_id,
        {"object": "adapter", "base_model": "gpt2"},
        lambda folder: generator.save_adapter(weights, folder),
    )
    response = client.post("/v1/completions", json={"model": adapter_id, "prompt": "hi"})
    assert response.status_code == 422, response.json
    assert "does not fit" in response.json["error"]["message"]
    assert response.json["error"]["code"] == "adapter_incompatible"


def test_smollm2_bottleneck_config_loads():
    from training.config import MetaTrainConfig, load_config

    path = Path(__file__).resolve().parents[1] / "training" / "configs" / "bottleneck_smollm2.yaml"
    config = load_config(MetaTrainConfig, path)
    assert (config.adapter_kind, config.objective, config.bottleneck_size) == (
        "bottleneck",
        "sft",
        12,
    )
    assert (
        576 % config.bottleneck_size == 0
    )  # SmolLM2's hidden size: an AdapterHub reduction factor
