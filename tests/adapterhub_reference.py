"""Runs inside a separate venv with AdapterHub's ``adapters`` (and the transformers it pins):
loads a tiny Llama and one of our exported bottleneck folders the way a user would, and writes
what ``tests/test_adapterhub.py`` compares against our own forward pass.

    python tests/adapterhub_reference.py WORK_DIR

WORK_DIR holds ``model.safetensors`` + ``llama_config.json`` (the tiny Llama), ``input.safetensors``
(``input_ids``) and ``adapter/`` (our export). Written: ``reference.safetensors`` (``logits``:
with the adapter active, ``base``: with it deactivated) and ``resaved/``, the adapter saved
back by ``adapters`` itself (its key names and config, to compare with ours).
Imports only torch, transformers, safetensors and adapters: never hypergen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import adapters
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM


def main(work: Path) -> None:
    config = LlamaConfig(**json.loads((work / "llama_config.json").read_text()))
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(load_file(work / "model.safetensors"), strict=False)
    # a tied lm_head is not saved on its own
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.eval()
    adapters.init(model)
    name = model.load_adapter(str(work / "adapter"), use_safetensors=True, set_active=True)
    input_ids = load_file(work / "input.safetensors")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids).logits
        model.set_active_adapters(None)
        base = model(input_ids).logits
    save_file(
        {"logits": logits.contiguous(), "base": base.contiguous()}, work / "reference.safetensors"
    )
    model.save_adapter(str(work / "resaved"), name, use_safetensors=True)
    print(f"adapters {adapters.__version__}: loaded '{name}', logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
