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


def test_only_fp32_cpu_layers_are_packed():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).to(torch.float64))
    assert pack_linear_weights(model) == 1
    assert is_packed(model[0]) and not is_packed(model[1])


def test_the_service_engine_runs_packed_on_cpu(engine, checkpoint_dir):
    from service.engine import Engine

    assert any(is_packed(m) for m in engine.model.modules())
    plain = Engine.load(checkpoint_dir, packed_linear=False)
    assert not any(is_packed(m) for m in plain.model.modules())


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
