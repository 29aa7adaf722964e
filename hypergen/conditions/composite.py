"""Composite conditioner: a condition made of parts (a description and a language, as Hyper-X
conditions on task and language), one conditioner per part, their vectors concatenated.

    conditioner = CompositeConditioner({"description": TextConditioner(), "language": LanguageConditioner()})
    conditioner.encode([{"description": "Answer riddles.", "language": "sw"}])  # (1, 384 + 289)

Each part's vector keeps its own normalisation (unit norm for text and language), so no part
drowns the other; the hypernetwork's ``condition_dim`` is the sum of the parts' sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hypergen.config import COMPOSITE_KIND


class CompositeConditioner:
    """Conditions ``{part: value}`` -> the parts' vectors concatenated in ``parts`` order.

    Args:
        conditioners: condition part (``description``, ``language``) -> the conditioner of that
            part; each must take exactly that one part.
    """

    kind = COMPOSITE_KIND

    def __init__(self, conditioners: Mapping[str, Any]):
        if len(conditioners) < 2:
            raise ValueError("a composite conditioner needs at least two parts")
        for part, conditioner in conditioners.items():
            if tuple(conditioner.parts) != (part,):
                raise ValueError(
                    f"the {part!r} part needs a conditioner of that part; "
                    f"{conditioner.kind} takes {list(conditioner.parts)}"
                )
        self.conditioners = dict(conditioners)
        self.parts = tuple(self.conditioners)
        self.name = "+".join(self.parts)
        self.dim = sum(c.dim for c in self.conditioners.values())

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules ``encode`` runs (for inference-time speed-ups such as packed linears)."""
        return [n for c in self.conditioners.values() for n in c.networks()]

    def normalize(self, condition: Any) -> dict[str, Any]:
        """Canonical condition: ``{part: that part's canonical value}`` for every part.

        Raises:
            TypeError: ``condition`` is not a mapping.
            ValueError: a part is missing or unknown, or a part's value is invalid.
        """
        if not isinstance(condition, Mapping):
            raise TypeError(
                f"a {self.name} condition is a mapping with the keys {list(self.parts)}, "
                f"got {type(condition).__name__}"
            )
        check_parts(condition, self.parts)
        normalized = {}
        for part, conditioner in self.conditioners.items():
            try:
                normalized[part] = conditioner.normalize(condition[part])
            except (TypeError, ValueError) as err:  # say which part is wrong
                raise type(err)(f"{part}: {err}") from err
        return normalized

    def encode(self, conditions: Sequence[Mapping[str, Any]]) -> Tensor:
        rows = [self.normalize(c) for c in conditions]
        vectors = [c.encode([r[part] for r in rows]) for part, c in self.conditioners.items()]
        device = vectors[0].device
        return torch.cat([v.float().to(device) for v in vectors], dim=1)  # (b, sum of dims)


def check_parts(given: Mapping[str, Any], supported: Sequence[str]) -> None:
    """Raise a ValueError naming what is wrong unless ``given`` has exactly the ``supported`` parts."""
    takes = " and ".join(supported)
    extra = [p for p in given if p not in supported]
    if extra:
        raise ValueError(
            f"this checkpoint takes {takes}; it does not take {' or '.join(map(str, extra))}"
        )
    missing = [p for p in supported if p not in given]
    if missing:
        raise ValueError(f"this checkpoint takes {takes}; {' and '.join(missing)} is missing")
