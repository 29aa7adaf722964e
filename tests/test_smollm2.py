"""Real-model checks on SmolLM2-135M + all-MiniLM-L6-v2 (slow: run with `make test-slow`)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from hypergen import (
    AdapterGenerator,
    EncoderConfig,
    HyperNetConfig,
    TextConditioner,
    apply_adapters,
    load_base_model,
)
from tests.conftest import randomize_

pytestmark = pytest.mark.slow


def test_smollm2_peft_export_matches_on_the_fly(tmp_path):
    model, tokenizer = load_base_model("smollm2-135m")
    assert len(model.model.layers) == 30
    generator = AdapterGenerator.create(
        model, "smollm2-135m", TextConditioner(), EncoderConfig(), HyperNetConfig()
    )
    randomize_(generator, std=0.01)
    lora = generator.generate(["Answer questions about dates in MM/DD/YYYY format."])
    folder = generator.save_peft(lora, tmp_path / "adapter")
    batch = tokenizer(
        ["The capital of France is", "Q: What is 2 + 3?\nA:"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        base = model(**batch).logits
        with apply_adapters(model, lora):
            ours = model(**batch).logits
    peft_model = PeftModel.from_pretrained(load_base_model("smollm2-135m")[0], folder).eval()
    assert set(get_peft_model_state_dict(peft_model)) == set(
        load_file(folder / "adapter_model.safetensors")
    )
    with torch.no_grad():
        theirs = peft_model(**batch).logits
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - base).abs().max() > 1e-2
