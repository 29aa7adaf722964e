"""Adapter kinds and what is done with them: the tensors a hypernetwork emits, applied and saved.

    lora.py           LoRA weights and math (``LoraWeights``)
    lora_geometry.py  inner products and cosines of LoRA updates without forming delta W
    apply.py          ``apply_adapters``: per-example forward hooks in a context manager
    export.py         PEFT LoRA folders <-> ``LoraWeights``
"""
