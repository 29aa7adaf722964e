"""Adapter kinds and what is done with them: the tensors a hypernetwork emits, applied and saved.

lora.py           LoRA weights and math (``LoraWeights``)
bottleneck.py     bottleneck adapters after attention / MLP blocks (``BottleneckWeights``)
lora_geometry.py  inner products and cosines of LoRA updates without forming delta W
bottleneck_geometry.py  the same for bottleneck adapters' linearised updates
apply.py          ``apply_adapters``: per-example forward hooks in a context manager, any kind
export.py         PEFT LoRA folders <-> ``LoraWeights``
adapterhub.py     AdapterHub (``adapters`` library) folders <-> ``BottleneckWeights``
"""
