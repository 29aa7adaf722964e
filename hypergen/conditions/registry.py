"""The conditioner interface and registry: ``EncoderConfig.kind`` -> conditioner class.

A conditioner has a ``kind``, the condition ``parts`` it takes (``("description",)`` for text,
``("language",)``, ``("document",)``, ``("examples",)``, or several for a composite), an output size ``dim``, ``normalize`` (the
canonical form of one condition, used for content hashes: a string for one part, a dict for
several) and ``encode`` (a batch of conditions -> (b, dim) float32). New condition types are new
modules registered in ``CONDITIONERS``; the hypernetwork only sees vectors and never changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from hypergen.conditions.composite import CompositeConditioner, check_parts
from hypergen.conditions.demonstrations import DemonstrationsConditioner
from hypergen.conditions.document import DocumentConditioner
from hypergen.conditions.hashing import HashingConditioner
from hypergen.conditions.language import LanguageConditioner
from hypergen.conditions.text import TextConditioner
from hypergen.config import COMPOSITE_KIND, EncoderConfig


class Conditioner(Protocol):
    kind: str
    parts: tuple[str, ...]
    dim: int

    def normalize(self, condition: Any) -> Any: ...

    def networks(self) -> list[torch.nn.Module]: ...

    def encode(self, conditions: Sequence[Any]) -> Tensor: ...


CONDITIONERS: dict[str, type] = {
    "text": TextConditioner,
    "hashing": HashingConditioner,
    "language": LanguageConditioner,
    "document": DocumentConditioner,
    "demonstrations": DemonstrationsConditioner,
    COMPOSITE_KIND: CompositeConditioner,
}


def build_conditioner(config: EncoderConfig, device: str | torch.device = "cpu") -> Conditioner:
    """Instantiate the conditioner a checkpoint asks for (a composite one builds each part's)."""
    if config.kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner kind '{config.kind}'; known: {sorted(CONDITIONERS)}")
    if config.kind == COMPOSITE_KIND:
        return CompositeConditioner(
            {part: build_conditioner(e, device) for part, e in config.parts.items()}
        )
    return CONDITIONERS[config.kind](config.name, device=device)


def condition_parts(config: EncoderConfig) -> tuple[str, ...]:
    """The condition parts a checkpoint's encoder takes, read from its config (nothing loads)."""
    if config.kind == COMPOSITE_KIND:
        return tuple(config.parts)
    if config.kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner kind '{config.kind}'; known: {sorted(CONDITIONERS)}")
    return CONDITIONERS[config.kind].parts


def condition_from_parts(parts: tuple[str, ...], given: Mapping[str, Any]) -> Any:
    """``{"description": ..., "language": ...}`` -> the condition a conditioner taking ``parts``
    expects: the bare value for one part, a dict for several (not yet normalised).

    Raises:
        ValueError: a part is given that it does not take, or one it takes is missing (the
            message names what it takes).
    """
    check_parts(given, parts)
    return given[parts[0]] if len(parts) == 1 else {p: given[p] for p in parts}
