"""The bottleneck adapter kind on tiny models: math, hypernetwork shapes, per-example hooks,
zero-init no-op, checkpoint, AdapterHub-format export/reload, and a 2-step meta-training run.
(``tests/test_adapterhub.py``, slow, checks the export against a real ``adapters`` install.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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
from tests.conftest import ENCODER
from tests.test_training import run_meta_train, toy  # noqa: F401 (toy is a fixture)

DESCRIPTIONS = [
    "Answer questions about dates.",
    "Translate English to French.",
    "Classify sentiment.",
]
TEXTS = ("The cat sits on the mat.", "What is 2 plus 3?", "I loved it.")


def make_bottleneck_generator(
    model, model_dir, conditioner, randomize=True, **spec
) -> AdapterGenerator:
    config = HyperNetConfig(
        hidden_dim=32,
        num_blocks=1,
        adapter_kind="bottleneck",
        bottleneck=BottleneckSpec(size=8, **spec),
    )
    generator = AdapterGenerator.create(model, model_dir, conditioner, ENCODER, config)
    if randomize:  # the up head starts at zero: give it weights so adapters change outputs
        torch.manual_seed(0)
        with torch.no_grad():
            for head in generator.hypernet.heads.values():
                head.to_up.weight.normal_(std=0.05)
                head.to_up_bias.weight.normal_(std=0.05)
        generator.meta.trained_steps = 1
    return generator


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


def test_cli_generate_writes_adapterhub_folder(llama, llama_dir, conditioner, tmp_path, capsys):
    from hypergen.cli import main

    generator = make_bottleneck_generator(llama[0], llama_dir, conditioner)
    checkpoint = generator.save_pretrained(tmp_path / "ckpt")
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(checkpoint),
                DESCRIPTIONS[0],
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    weights, config = load_adapterhub(capsys.readouterr().out.split()[0])
    assert config["hypergen"]["adapter_kind"] == "bottleneck" and weights.size == 8
    expected = generator.generate(DESCRIPTIONS[:1])
    assert all(torch.equal(weights.up[k], expected.up[k]) for k in expected.module_names)


def test_service_refuses_bottleneck_checkpoint_clearly(llama, llama_dir, conditioner, tmp_path):
    from service.engine import Engine

    checkpoint = make_bottleneck_generator(llama[0], llama_dir, conditioner).save_pretrained(
        tmp_path / "ckpt"
    )
    with pytest.raises(ValueError, match="LoRA checkpoints only.*bottleneck"):
        Engine.load(str(checkpoint))


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
