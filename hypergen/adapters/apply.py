"""Apply generated adapters to a frozen model on the fly, one adapter per example of a batch.

The model is never copied or edited: forward hooks add each example's update to the output of
the adapted modules and are removed when the context exits, even on error. Gradients flow into
the adapter tensors (meta-training) and the same code runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from torch import nn


class AdapterWeights(Protocol):
    """What ``apply_adapters`` needs from an adapter type (see ``hypergen.adapters.lora.LoraWeights``)."""

    module_names: list[str]

    def forward_hook(self, name: str): ...

    def __len__(self) -> int: ...


@contextmanager
def apply_adapters(model: nn.Module, weights: AdapterWeights) -> Iterator[nn.Module]:
    """Run ``model`` with ``weights`` applied inside the ``with`` block.

    Example k of every forward batch gets adapter k of ``weights`` (or adapter 0 for all examples
    when ``weights`` holds a single adapter).

    Raises:
        ValueError: a module named by ``weights`` does not exist in ``model``.
    """
    # get_submodule walks one path per name; a dict of all named_modules() cost ~1 ms a call,
    # paid on every prefill in serving
    modules, missing = {}, []
    for name in weights.module_names:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            missing.append(name)
    if missing:
        raise ValueError(f"adapter targets not in {type(model).__name__}: {missing[:5]}")
    handles = []
    try:
        for name in weights.module_names:
            handles.append(modules[name].register_forward_hook(weights.forward_hook(name)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
