"""Hashing conditioner: descriptions -> hashed bag-of-words vectors, no model to load."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hypergen.conditions.text import normalize_text


class HashingConditioner:
    """Descriptions -> unit-norm hashed bag-of-words vectors; no model to load.

    For smoke tests and CPU-only CI runs where a sentence encoder is too heavy; ``name`` is
    ``"hash-<dim>"``. Hashing is by CRC32, so vectors are stable across processes and machines.
    """

    kind = "hashing"
    parts = ("description",)

    def __init__(
        self, name: str = "hash-64", device: str | torch.device = "cpu", max_chars: int = 2000
    ):
        prefix, _, dim = name.partition("-")
        if prefix != "hash" or not dim.isdigit() or int(dim) < 1:
            raise ValueError(f"hashing conditioner name must look like 'hash-64', got '{name}'")
        self.name, self.dim, self.device, self.max_chars = name, int(dim), device, max_chars

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules ``encode`` runs: none (hashing needs no model)."""
        return []

    def normalize(self, condition: Any) -> str:
        """Canonical description, as for ``TextConditioner``."""
        return normalize_text(condition, self.max_chars)

    def encode(self, conditions: Sequence[str]) -> Tensor:
        vectors = torch.zeros(len(conditions), self.dim)
        for row, text in enumerate(conditions):
            for word in self.normalize(text).lower().split():
                h = zlib.crc32(word.encode())
                vectors[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return torch.nn.functional.normalize(vectors, dim=1).to(self.device)
