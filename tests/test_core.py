"""Core behaviour: targets, hypernetwork init, on-the-fly application, merge and PEFT equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from hypergen import (
    AdapterGenerator,
    EncoderConfig,
    HyperNetConfig,
    LoraSpec,
    apply_adapters,
    find_targets,
    load_base_model,
    load_checkpoint,
    load_peft,
    lora_delta_weight,
)
from tests.conftest import ENCODER

DESCRIPTIONS = [
    "Answer questions about dates.",
    "Translate English to French.",
    "Classify sentiment.",
]


def _inputs(tokenizer, texts=("The cat sits on the mat.", "What is 2 plus 3?", "I loved it.")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def _logits(model, batch):
    return model(**batch).logits


# --- targets -----------------------------------------------------------------------------------


def test_find_targets_llama_shapes(llama):
    targets = find_targets(llama[0], ["q_proj", "v_proj"])
    assert [(t.layer, t.kind) for t in targets] == [
        (0, "q_proj"),
        (0, "v_proj"),
        (1, "q_proj"),
        (1, "v_proj"),
    ]
    v = targets[1]
    assert (v.in_features, v.out_features, v.fan_in_fan_out) == (64, 32, False)  # 2 kv heads of 16
    assert v.name == "model.layers.0.self_attn.v_proj"


def test_find_targets_gpt2_conv1d(gpt2):
    targets = find_targets(gpt2[0], ["c_attn"])
    assert len(targets) == 2
    assert (targets[0].in_features, targets[0].out_features, targets[0].fan_in_fan_out) == (
        64,
        192,
        True,
    )


def test_find_targets_clear_errors(llama):
    with pytest.raises(ValueError, match="'k_projj' not found.*q_proj"):
        find_targets(llama[0], ["k_projj"])
    with pytest.raises(ValueError, match="not a Linear"):
        find_targets(llama[0], ["input_layernorm"])


# --- hypernetwork -------------------------------------------------------------------------------


def test_create_leaves_the_callers_config_and_rng_alone(llama, llama_dir, conditioner):
    config = HyperNetConfig(hidden_dim=32, condition_dim=7)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = AdapterGenerator.create(llama[0], llama_dir, conditioner, ENCODER, config, seed=5)
    assert torch.equal(torch.rand(3), expected_next), "the global RNG must not be reseeded"
    assert config.condition_dim == 7, "the caller's config must not be edited"
    assert first.hypernet.config.condition_dim == conditioner.dim
    again = AdapterGenerator.create(llama[0], llama_dir, conditioner, ENCODER, config, seed=5)
    other = AdapterGenerator.create(llama[0], llama_dir, conditioner, ENCODER, config, seed=6)
    same = [
        torch.equal(a, b) for a, b in zip(first.hypernet.parameters(), again.hypernet.parameters())
    ]
    assert all(same), "the seed fixes the initial weights"
    differ = [
        torch.equal(a, b) for a, b in zip(first.hypernet.parameters(), other.hypernet.parameters())
    ]
    assert not all(differ)


def test_fresh_hypernetwork_is_a_noop(llama, llama_dir, conditioner):
    model, tokenizer = llama
    generator = AdapterGenerator.create(
        model, llama_dir, conditioner, ENCODER, HyperNetConfig(hidden_dim=32)
    )
    lora = generator.generate(DESCRIPTIONS)
    assert all(b.abs().max() == 0 for b in lora.B.values())
    assert all(a.abs().max() > 0 for a in lora.A.values()), (
        "A must start non-zero so B gets gradients"
    )
    batch = _inputs(tokenizer)
    with torch.no_grad():
        base = _logits(model, batch)
        with apply_adapters(model, lora):
            adapted = _logits(model, batch)
    torch.testing.assert_close(adapted, base, rtol=0, atol=0)
    assert generator.meta.untrained


def test_hypernetwork_shapes_and_condition_dependence(llama_generator):
    lora = llama_generator.generate(DESCRIPTIONS)
    assert len(lora) == 3 and lora.rank == 4
    assert lora.A["model.layers.1.self_attn.q_proj"].shape == (3, 4, 64)
    assert lora.B["model.layers.1.self_attn.v_proj"].shape == (3, 32, 4)
    assert lora.B["model.layers.0.mlp.down_proj"].shape == (3, 64, 4)
    a = lora.A["model.layers.0.self_attn.q_proj"]
    assert not torch.allclose(a[0], a[1]), "different descriptions must give different adapters"
    b0, b1 = (
        lora.B["model.layers.0.self_attn.q_proj"][0],
        lora.B["model.layers.1.self_attn.q_proj"][0],
    )
    assert not torch.allclose(b0, b1), "layers must get different adapters"


def test_config_validation():
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\)"):
        HyperNetConfig.from_dict({"hidden_dim": 8, "hiden_dim": 8})
    assert HyperNetConfig.from_dict({"lora": {"rank": 2}}).lora.rank == 2


def test_dtype_names_are_checked_by_one_rule_everywhere():
    """Service, training and evaluation configs reject a bad dtype with the same message."""
    from evaluation.config import EvalConfig
    from service import create_app
    from training.config import MetaTrainConfig

    expected = r"must be one of \['float32', 'float16', 'bfloat16'\], got 'float64'"
    with pytest.raises(ValueError, match="EvalConfig.dtype " + expected):
        EvalConfig(dtype="float64")
    with pytest.raises(ValueError, match="MetaTrainConfig.export_dtype " + expected):
        MetaTrainConfig(export_dtype="float64")
    with pytest.raises(ValueError, match=r"DTYPE must be one of \[.*'bfloat16', 'auto'\]"):
        create_app({"DTYPE": "float64"})
    with pytest.raises(ValueError, match=r"EvalConfig.autocast must be one of \['', 'float16'"):
        EvalConfig(autocast="float32")


# --- on-the-fly application ---------------------------------------------------------------------


def test_heterogeneous_batch_equals_each_example_alone(llama, llama_generator):
    model, tokenizer = llama
    texts = ("The cat sits on the mat.", "What is 2 plus 3?", "I loved it.")
    lora = llama_generator.generate(DESCRIPTIONS)
    with torch.no_grad(), apply_adapters(model, lora):
        batched = model(**_inputs(tokenizer, texts)).logits
    for i, text in enumerate(texts):
        single = tokenizer([text], return_tensors="pt")
        n = single.input_ids.shape[1]
        with torch.no_grad(), apply_adapters(model, lora.select(i)):
            alone = model(**single).logits
        # right padding: the first n positions of row i are the unpadded sequence
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        base = model(**_inputs(tokenizer, texts)).logits
    assert (batched - base).abs().max() > 1e-3, "the adapters must change the output"


def test_base_model_unchanged_and_hooks_removed(llama, llama_generator):
    model, tokenizer = llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = llama_generator.generate(DESCRIPTIONS[:1])
    with pytest.raises(RuntimeError, match="boom"), apply_adapters(model, lora):
        raise RuntimeError("boom")
    with torch.no_grad(), apply_adapters(model, lora):
        model(**_inputs(tokenizer, ["hello"]))
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())


def test_adapter_for_missing_modules_is_refused_before_any_hook(llama, llama_generator):
    model, _ = llama
    lora = llama_generator.generate(DESCRIPTIONS[:1])
    name = lora.module_names[0]
    renamed = type(lora)(
        {**lora.A, "model.layers.99.self_attn.q_proj": lora.A[name]},
        {**lora.B, "model.layers.99.self_attn.q_proj": lora.B[name]},
        lora.scaling,
    )
    with pytest.raises(ValueError, match="layers.99"), apply_adapters(model, renamed):
        pass
    assert all(not m._forward_hooks for m in model.modules())


def test_gradients_reach_hypernetwork_only(llama, llama_generator):
    model, tokenizer = llama
    hypernet = llama_generator.hypernet.train()
    batch = _inputs(tokenizer)
    lora = hypernet(llama_generator.encode(DESCRIPTIONS))
    with apply_adapters(model, lora):
        loss = model(**batch, labels=batch.input_ids).loss
    loss.backward()
    grads = [p.grad for p in hypernet.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in model.parameters())


def test_inference_mode(llama, llama_generator):
    model, tokenizer = llama
    with torch.inference_mode():
        lora = llama_generator.hypernet(llama_generator.encode(DESCRIPTIONS))
        with apply_adapters(model, lora):
            out = model(**_inputs(tokenizer)).logits
    assert out.is_inference()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hooks_equal_merged_weights(arch, request):
    model, tokenizer = request.getfixturevalue(arch)
    generator = request.getfixturevalue(f"{arch}_generator")
    lora = generator.generate(DESCRIPTIONS[:1])
    batch = _inputs(tokenizer, ["The cat sits on the mat."])
    with torch.no_grad(), apply_adapters(model, lora):
        hooked = _logits(model, batch)
    modules = dict(model.named_modules())
    targets = {t.name: t for t in generator.targets}
    originals = {}
    try:
        with torch.no_grad():
            for name in lora.module_names:
                delta = lora_delta_weight(lora.A[name][0], lora.B[name][0], lora.scaling)  # (o, i)
                weight = modules[name].weight
                originals[name] = weight.clone()
                weight += delta.T if targets[name].fan_in_fan_out else delta
            merged = _logits(model, batch)
    finally:
        with torch.no_grad():
            for name, w in originals.items():
                modules[name].weight.copy_(w)
    torch.testing.assert_close(hooked, merged, atol=1e-5, rtol=1e-5)


# --- PEFT files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_export_loads_and_matches(arch, request, tmp_path):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    model, tokenizer = request.getfixturevalue(arch)
    generator = request.getfixturevalue(f"{arch}_generator")
    lora = generator.generate(DESCRIPTIONS[:1])
    folder = generator.save_peft(lora, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    saved = load_file(folder / "adapter_model.safetensors")

    batch = _inputs(tokenizer)
    with torch.no_grad(), apply_adapters(model, lora):
        ours = _logits(model, batch)
    fresh, _ = load_base_model(model_dir)
    peft_model = PeftModel.from_pretrained(fresh, folder).eval()
    assert set(get_peft_model_state_dict(peft_model)) == set(saved), "missing or unexpected keys"
    with torch.no_grad():
        theirs = _logits(peft_model, batch)
    assert (ours - theirs).abs().max() <= 1e-4
    with torch.no_grad():
        assert (theirs - _logits(model, batch)).abs().max() > 1e-3, "the adapter must matter"


def test_load_peft_roundtrip(llama_generator, tmp_path):
    lora = llama_generator.generate(DESCRIPTIONS[1:2])
    folder = llama_generator.save_peft(lora, tmp_path / "a")
    loaded, config = load_peft(folder)
    assert config["r"] == 4
    assert set(loaded.module_names) == set(lora.module_names)
    assert loaded.scaling == lora.scaling
    for name in lora.module_names:
        torch.testing.assert_close(loaded.A[name], lora.A[name])
        torch.testing.assert_close(loaded.B[name], lora.B[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_peft_weights_file_is_what_safetensors_torch_writes(llama_generator, tmp_path, dtype):
    """The weights go through safetensors' numpy writer where numpy has the dtype (faster):
    the file is what ``safetensors.torch`` writes: the same header (names, dtypes, shapes,
    offsets, metadata; its JSON key order varies from write to write) and the same data bytes."""
    import struct

    from safetensors import safe_open
    from safetensors.torch import load, save

    def parts(raw: bytes) -> tuple[dict, bytes]:
        size = struct.unpack("<Q", raw[:8])[0]
        return json.loads(raw[8 : 8 + size]), raw[8 + size :]

    lora = llama_generator.generate(DESCRIPTIONS[1:2])
    folder = llama_generator.save_peft(lora, tmp_path / "a", dtype=dtype, metadata={"k": "v"})
    written = (folder / "adapter_model.safetensors").read_bytes()
    tensors = load(written)
    with safe_open(folder / "adapter_model.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["k"] == "v" and {t.dtype for t in tensors.values()} == {dtype}
    assert parts(written) == parts(save(tensors, metadata=metadata))


def test_exported_adapters_say_which_base_weights_they_fit(llama_generator, tmp_path):
    """Adapters for the built-in SmolLM2 record that its weights are the dequantised 4-bit GGUF."""
    import dataclasses

    from safetensors import safe_open

    from hypergen.adapters.export import WEIGHTS_NAME

    def header(folder):
        with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
            return f.metadata()

    lora = llama_generator.generate(DESCRIPTIONS[:1])
    plain = llama_generator.save_peft(lora, tmp_path / "plain")
    assert "hypergen_base_weights" not in header(plain)  # a local folder: nothing to say
    builtin = AdapterGenerator(
        llama_generator.hypernet,
        llama_generator.conditioner,
        dataclasses.replace(llama_generator.meta, base_model="smollm2-135m"),
    )
    folder = builtin.save_peft(lora, tmp_path / "smollm2")
    note = header(folder)["hypergen_base_weights"]
    assert "4-bit GGUF" in note and "dequantised" in note and "SmolLM2-135M-Instruct" in note
    assert header(folder)["format"] == "pt"


def test_load_peft_from_peft_trained_adapter(llama, llama_dir, tmp_path):
    """A LoRA made by peft itself (random B, rsLoRA scaling) reads back to the same logits."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = llama
    fresh, _ = load_base_model(llama_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        fresh, LoraConfig(r=2, lora_alpha=5, target_modules=["k_proj"], use_rslora=True)
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.save_pretrained(tmp_path / "p")
    batch = _inputs(tokenizer)
    with torch.no_grad():
        theirs = _logits(peft_model.eval(), batch)
    lora, _ = load_peft(tmp_path / "p")
    with torch.no_grad(), apply_adapters(model, lora):
        ours = _logits(model, batch)
    assert (ours - theirs).abs().max() <= 1e-4


def test_load_peft_rejects_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft(tmp_path)
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2})
    )
    (tmp_path / "adapter_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(FileNotFoundError, match="pickled"):
        load_peft(tmp_path)


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_roundtrip(llama, llama_generator, conditioner, tmp_path):
    folder = llama_generator.save_pretrained(tmp_path / "ckpt")
    config = json.loads((folder / "hypernet_config.json").read_text())
    assert config["format_version"] == 1 and config["hypernet"]["lora"]["rank"] == 4
    assert config["encoder"] == {"kind": "hashing", "name": "hash-32"}
    assert len(config["targets"]) == 6
    loaded = AdapterGenerator.from_pretrained(folder, base_model=llama[0])
    a, b = llama_generator.generate(DESCRIPTIONS), loaded.generate(DESCRIPTIONS)
    for name in a.module_names:
        torch.testing.assert_close(a.A[name], b.A[name])
        torch.testing.assert_close(a.B[name], b.B[name])


def test_checkpoint_rejects_other_base_model(llama_generator, gpt2, tmp_path):
    folder = llama_generator.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="another base model"):
        AdapterGenerator.from_pretrained(folder, base_model=gpt2[0])
    hypernet, _ = load_checkpoint(folder)
    with pytest.raises(ValueError, match="another base model"):
        hypernet.check_targets(find_targets(gpt2[0], ["c_attn"]))


def test_conditioner_dim_mismatch_is_clear(llama, llama_dir):
    from hypergen import HashingConditioner

    generator = AdapterGenerator.create(
        llama[0], llama_dir, HashingConditioner("hash-16"), EncoderConfig("hashing", "hash-16")
    )
    with pytest.raises(ValueError, match="gives 8-d vectors but the hypernetwork expects 16"):
        AdapterGenerator(generator.hypernet, HashingConditioner("hash-8"), generator.meta)


# --- text batches -------------------------------------------------------------------------------


def test_tokenize_pairs_labels_only_completion(tokenizer):
    from hypergen.data.text_batches import IGNORE_INDEX, tokenize_pairs

    batch = tokenize_pairs(
        tokenizer, ["Q: What is 2 plus 3?\nA:", "Hi"], [" 5", " positive"], max_length=6
    )
    completion = tokenizer(" positive", add_special_tokens=False).input_ids
    row = batch["labels"][1]
    assert row[row != IGNORE_INDEX].tolist() == completion
    assert (
        batch["input_ids"].shape[1] <= 6 and batch["attention_mask"][0].sum() == 6
    )  # prompt cut from the left
    assert (
        batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
        == tokenizer(" 5", add_special_tokens=False).input_ids
    )


def test_completion_logprobs_matches_manual(llama):
    from hypergen.data.text_batches import completion_logprobs, tokenize_pairs

    model, tokenizer = llama
    batch = tokenize_pairs(tokenizer, ["The cat", "What is"], [" sits on the mat", " 5"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = completion_logprobs(logits, batch["labels"])
    logp = torch.log_softmax(logits[0], -1)
    labels = batch["labels"][0]
    manual = sum(logp[t - 1, labels[t]] for t in range(1, labels.shape[0]) if labels[t] >= 0)
    torch.testing.assert_close(total[0], manual)
    assert count.tolist() == [(batch["labels"][i] >= 0).sum().item() for i in range(2)]


def test_written_folders_are_readable_by_others(llama_generator, tmp_path):
    """Folders are built under mkdtemp (mode 0700) and renamed: they must end with normal modes."""
    import os

    umask = os.umask(0o022)
    try:
        ckpt = llama_generator.save_pretrained(tmp_path / "ckpt")
        peft_dir = llama_generator.save_peft(llama_generator.generate(["x"]), tmp_path / "peft")
    finally:
        os.umask(umask)
    assert (ckpt.stat().st_mode & 0o777) == 0o755
    assert (peft_dir.stat().st_mode & 0o777) == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], (
        "no temporary folder left behind"
    )


def test_bf16_autocast_generation_is_close_to_float32(llama_generator):
    exact = llama_generator.generate(DESCRIPTIONS)
    fast = llama_generator.generate(DESCRIPTIONS, autocast_dtype=torch.bfloat16)
    for name in exact.module_names:
        torch.testing.assert_close(fast.B[name].float(), exact.B[name], atol=2e-2, rtol=5e-2)
        torch.testing.assert_close(fast.A[name].float(), exact.A[name], atol=2e-2, rtol=5e-2)


def test_hypergen_home_layout_is_defined_once(tmp_path, monkeypatch):
    """Every folder under $HYPERGEN_HOME comes from hypergen.layout; explicit paths win."""
    from hypergen import layout

    monkeypatch.setenv("HYPERGEN_HOME", str(tmp_path))
    assert layout.suite_dir() == tmp_path / "data" / "bigbench"
    assert layout.suite_dir(home=tmp_path / "other") == tmp_path / "other" / "data" / "bigbench"
    assert layout.suite_dir("mine", home=tmp_path / "other") == Path("mine")
    assert layout.library_dir() == tmp_path / "loras"
    assert layout.store_dir() == tmp_path / "store" and layout.store_dir("s") == Path("s")
    assert layout.run_dir("r") == tmp_path / "runs" / "r"
    assert layout.checkpoint_cache_dir("c") == tmp_path / "checkpoints" / "c"
    assert layout.library_folder("lib", "bbq_lite_json/age") == Path("lib/bbq_lite_json__age")
    assert layout.library_folder("lib", layout.MULTITASK) == Path("lib/_multitask")
    # results record paths that mean something on another machine
    assert layout.portable_path(tmp_path / "loras" / "t") == "$HYPERGEN_HOME/loras/t"
    assert layout.portable_path(tmp_path) == "$HYPERGEN_HOME"
    repo = tmp_path.parent / "repo"
    assert layout.portable_path(repo / "evaluation" / "x.yaml", repo) == "evaluation/x.yaml"
    assert layout.portable_path("/elsewhere/x", repo) == "/elsewhere/x"
    assert layout.portable_path("relative/x", repo) == "relative/x"
