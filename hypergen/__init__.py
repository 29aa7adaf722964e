"""hypergen: a hypernetwork turns a condition (a task description, optionally with a language)
into adapters (LoRA or bottleneck) for a frozen language model in one forward pass. Importing does no work; models load on demand.

The public names below are imported on first use (``hypergen.AdapterGenerator`` loads torch then),
so that ``import hypergen.cli`` and ``hypergen --help`` stay instant.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module defining it
_EXPORTS = {
    "load_adapterhub": "hypergen.adapters.adapterhub",
    "save_adapterhub": "hypergen.adapters.adapterhub",
    "BottleneckWeights": "hypergen.adapters.bottleneck",
    "bottleneck_delta": "hypergen.adapters.bottleneck",
    "LoraWeights": "hypergen.adapters.lora",
    "lora_delta": "hypergen.adapters.lora",
    "lora_delta_weight": "hypergen.adapters.lora",
    "apply_adapters": "hypergen.adapters.apply",
    "CheckpointMeta": "hypergen.checkpoint",
    "checkpoint_hash": "hypergen.checkpoint",
    "load_checkpoint": "hypergen.checkpoint",
    "save_checkpoint": "hypergen.checkpoint",
    "CONDITIONERS": "hypergen.conditions.registry",
    "CompositeConditioner": "hypergen.conditions.composite",
    "HashingConditioner": "hypergen.conditions.hashing",
    "LanguageConditioner": "hypergen.conditions.language",
    "TextConditioner": "hypergen.conditions.text",
    "build_conditioner": "hypergen.conditions.registry",
    "condition_from_parts": "hypergen.conditions.registry",
    "BottleneckSpec": "hypergen.config",
    "EncoderConfig": "hypergen.config",
    "HyperNetConfig": "hypergen.config",
    "LoraSpec": "hypergen.config",
    "Description": "hypergen.data.descriptions",
    "describe": "hypergen.data.descriptions",
    "Example": "hypergen.data.tasks",
    "Task": "hypergen.data.tasks",
    "TaskSplit": "hypergen.data.tasks",
    "load_split": "hypergen.data.tasks",
    "load_suite": "hypergen.data.tasks",
    "load_task_file": "hypergen.data.tasks",
    "split_examples": "hypergen.data.tasks",
    "completion_logprobs": "hypergen.data.text_batches",
    "tokenize_pairs": "hypergen.data.text_batches",
    "Completion": "hypergen.decoding",
    "Job": "hypergen.decoding",
    "SamplingParams": "hypergen.decoding",
    "decode": "hypergen.decoding",
    "load_peft": "hypergen.adapters.export",
    "save_peft": "hypergen.adapters.export",
    "AdapterGenerator": "hypergen.generator",
    "init_checkpoint": "hypergen.generator",
    "HyperNetwork": "hypergen.hypernet",
    "hypergen_home": "hypergen.layout",
    "load_base_model": "hypergen.models",
    "AdapterTarget": "hypergen.targets",
    "adapter_targets": "hypergen.targets",
    "find_block_targets": "hypergen.targets",
    "find_targets": "hypergen.targets",
}

__all__ = [*_EXPORTS]  # noqa: PLE0604 - the names above


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hypergen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
