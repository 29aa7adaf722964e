"""Linear layers on oneDNN-prepacked weights (hypergen/packed_linear.py): the same outputs as the
eager model, adapters' hooks included, and autograd still works where it is needed."""

from __future__ import annotations

import torch
from torch import nn

from hypergen import LoraWeights, apply_adapters, find_targets, load_base_model
from hypergen.packed_linear import (
    is_packed,
    pack_linear_weights,
    packed_linear_available,
    unpack_linear_weights,
)

TOLERANCE = 1e-4


def _logits(model, ids, lora=None):
    with torch.inference_mode():
        if lora is None:
            return model(input_ids=ids).logits
        with apply_adapters(model, lora):
            return model(input_ids=ids).logits


def test_packed_model_matches_eager_with_and_without_adapters(llama_dir):
    assert packed_linear_available()  # x86 CPU wheels ship oneDNN: the service's default path
    model, _ = load_base_model(llama_dir)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    ids = torch.randint(3, model.config.vocab_size, (3, 7))
    torch.manual_seed(0)
    targets = find_targets(model, ["q_proj", "v_proj"])
    lora = LoraWeights(
        {t.name: torch.randn(3, 2, t.in_features) * 0.1 for t in targets},
        {t.name: torch.randn(3, t.out_features, 2) * 0.1 for t in targets},
        2.0,
    )
    eager, eager_lora = _logits(model, ids), _logits(model, ids, lora)
    assert (eager_lora - eager).abs().max() > 1e-3  # the adapters do change the output

    assert pack_linear_weights(model) == linears
    assert pack_linear_weights(model) == 0  # already packed
    assert all(is_packed(m) for m in model.modules() if type(m) is nn.Linear)
    assert (_logits(model, ids) - eager).abs().max() <= TOLERANCE
    assert (_logits(model, ids, lora) - eager_lora).abs().max() <= TOLERANCE
    layer = next(m for m in model.modules() if type(m) is nn.Linear)
    one = torch.randn(1, 1, layer.in_features)  # a lone row takes the plain path (MIN_ROWS)
    assert torch.equal(layer(one), nn.functional.linear(one, layer.weight, layer.bias))

    assert unpack_linear_weights(model) == linears
    assert not any(is_packed(m) for m in model.modules())
    assert torch.equal(_logits(model, ids), eager)


def test_a_packed_layer_falls_back_to_autograd_when_a_gradient_is_needed():
    layer = nn.Linear(8, 4)
    layer.requires_grad_(False)
    reference = nn.Linear(8, 4)
    reference.load_state_dict(layer.state_dict())
    assert pack_linear_weights(layer) == 1
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    reference(x).sum().backward()
    assert torch.allclose(grad, x.grad)


def test_only_fp32_and_bf16_cpu_layers_are_packed():
    """bf16 only where oneDNN has bf16 kernels (AVX512 and up); elsewhere it stays plain."""
    model = nn.Sequential(
        nn.Linear(4, 4), nn.Linear(4, 4).to(torch.float64), nn.Linear(4, 4).to(torch.float16)
    )
    model.append(nn.Linear(4, 4).to(torch.bfloat16))
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert pack_linear_weights(model) == 1 + bf16
    assert is_packed(model[0]) and not is_packed(model[1]) and not is_packed(model[2])
    assert is_packed(model[3]) == bf16


def test_bf16_packed_model_matches_bf16_eager(llama_dir):
    """The AMX path (``DTYPE`` auto on such CPUs): packed bf16 logits stay within bf16 rounding
    of the eager bf16 model's, with the same greedy picks, per-row adapters included."""
    model, _ = load_base_model(llama_dir, dtype=torch.bfloat16)
    ids = torch.randint(3, model.config.vocab_size, (4, 9))
    targets = find_targets(model, ["q_proj", "v_proj"])
    torch.manual_seed(1)
    lora = LoraWeights(
        {t.name: torch.randn(4, 2, t.in_features) * 0.1 for t in targets},
        {t.name: torch.randn(4, t.out_features, 2) * 0.1 for t in targets},
        2.0,
    )
    eager, eager_lora = _logits(model, ids), _logits(model, ids, lora)
    packed_count = pack_linear_weights(model)
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert packed_count == 0  # no bf16 kernels on this CPU: the model runs plain
        return
    assert packed_count == sum(type(m) is nn.Linear for m in model.modules())
    for packed, reference in (
        (_logits(model, ids), eager),
        (_logits(model, ids, lora), eager_lora),
    ):
        assert packed.dtype == torch.bfloat16
        scale = reference.float().abs().max()
        assert (packed.float() - reference.float()).abs().max() <= 0.05 * scale
        agree = (packed.argmax(-1) == reference.argmax(-1)).float().mean()
        assert agree >= 0.9


def test_a_packed_layer_takes_rows_of_any_view():
    """The LM head sees a strided 3-D view (the prompt's last position): the packed layer gives
    the same result as for a contiguous copy, in the input's shape."""
    layer = nn.Linear(16, 32).requires_grad_(False)
    pack_linear_weights(layer)
    hidden = torch.randn(3, 5, 16)
    last = hidden[:, -1:, :]
    out = layer(last)
    assert out.shape == (3, 1, 32)
    expected = nn.functional.linear(last.contiguous(), layer.weight, layer.bias)
    assert (out - expected).abs().max() <= TOLERANCE


def test_the_service_engine_runs_packed_on_cpu(engine, checkpoint_dir):
    from service.engine import Engine

    assert any(is_packed(m) for m in engine.model.modules())
    plain = Engine.load(checkpoint_dir, packed_linear=False)
    assert not any(is_packed(m) for m in plain.model.modules())


def test_auto_dtype_is_bf16_only_on_an_amx_cpu(monkeypatch):
    from hypergen import precision

    for amx, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(precision, "cpu_has_amx", lambda amx=amx: amx)
        assert precision.resolve_model_dtype("auto", "cpu") == expected
        assert precision.resolve_model_dtype("auto", "meta") == "float32"  # not a CPU
        assert precision.resolve_model_dtype("float16", "cpu") == "float16"  # named: kept


def test_the_engine_resolves_auto_and_says_which_dtype_it_runs(checkpoint_dir, monkeypatch):
    from hypergen import precision
    from service.engine import Engine

    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    engine = Engine.load(checkpoint_dir, dtype="auto")
    assert engine.dtype == torch.bfloat16
    assert engine.info()["base_model_dtype"] == "bfloat16"
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert Engine.load(checkpoint_dir, dtype="auto").info()["base_model_dtype"] == "float32"


def test_the_service_engine_packs_the_condition_encoder_too(checkpoint_dir, monkeypatch):
    """A description's encoding is a forward pass of its own on every new adapter: the engine
    packs the networks the conditioner runs (``networks()``; the tiny checkpoint's hashing
    conditioner has none, so one stands in)."""
    from hypergen.conditions.hashing import HashingConditioner
    from service.engine import Engine

    encoder = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4))
    monkeypatch.setattr(HashingConditioner, "networks", lambda self: [encoder])
    Engine.load(checkpoint_dir)
    assert is_packed(encoder[0]) and is_packed(encoder[2])


def test_a_bf16_engine_serves_mixed_batches(checkpoint_dir):
    """``DTYPE`` bfloat16 end to end on the engine: rows with and without adapters decode
    together in one batch (fp32 LoRA factors on a bf16 model), packed where oneDNN has bf16."""
    from hypergen.decoding import Job, SamplingParams
    from service.engine import Engine

    engine = Engine.load(checkpoint_dir, dtype="bfloat16")
    assert engine.dtype == torch.bfloat16
    bf16_kernels = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert any(is_packed(m) for m in engine.model.modules()) == bf16_kernels
    made = engine.make_adapters(["Translate English to French.", "Classify sentiment."])
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    prompts = ["The cat", "What is two plus", "Hello"]
    jobs = [Job(engine.tokenize(p), a, params) for p, a in zip(prompts, [*made, None])]
    for done in engine.complete(jobs):
        assert done.error is None and len(done.token_ids) == 5
