"""The conditioner interface and registry: ``EncoderConfig.kind`` -> conditioner class.

A conditioner has a ``kind``, an output size ``dim``, ``normalize`` (the canonical form of one
condition, used for content hashes) and ``encode`` (a batch of conditions -> (b, dim) float32).
New condition types are new modules registered in ``CONDITIONERS``; the hypernetwork only sees
vectors and never changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from hypergen.conditions.hashing import HashingConditioner
from hypergen.conditions.text import TextConditioner
from hypergen.config import EncoderConfig


class Conditioner(Protocol):
    kind: str
    dim: int

    def normalize(self, condition: Any) -> str: ...

    def encode(self, conditions: Sequence[Any]) -> Tensor: ...


CONDITIONERS: dict[str, type] = {"text": TextConditioner, "hashing": HashingConditioner}


def build_conditioner(config: EncoderConfig, device: str | torch.device = "cpu") -> Conditioner:
    """Instantiate the conditioner a checkpoint asks for."""
    if config.kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner kind '{config.kind}'; known: {sorted(CONDITIONERS)}")
    return CONDITIONERS[config.kind](config.name, device=device)
