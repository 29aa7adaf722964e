"""Adapter weights as plain tensors, and their math as pure functions.

Axes: b example (one adapter per example), n token, r rank, i in, o out, l layer.

An adapter type is a class holding per-example tensors for a set of module names and making a
forward hook for each (``forward_hook``); ``hypergen.adapters.apply`` installs those hooks. LoRA is the
first such type; ``hypergen.adapters.bottleneck.BottleneckWeights`` is another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import einsum
from torch import Tensor


def lora_delta(x: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """Per-example LoRA update ``s * B_b A_b x`` for a batch.

    Args:
        x: (b, ..., i) module inputs.
        A: (b, r, i) down-projections, or (1, r, i) shared by the whole batch.
        B: (b, o, r) up-projections, or (1, o, r).
        scaling: ``alpha / r``.

    Returns:
        (b, ..., o) the amount added to the frozen module's output.
    """
    if A.shape[0] != x.shape[0]:
        assert A.shape[0] == 1, f"{A.shape[0]} adapters for a batch of {x.shape[0]}"
        A, B = A.expand(x.shape[0], -1, -1), B.expand(x.shape[0], -1, -1)
    if x.dim() == 3:
        # the usual (b, n, i) case as two bmm calls: ~2.5x cheaper per call than einsum's
        # permute-and-reshape, which matters when decoding one token per row.
        h = torch.bmm(x, A.transpose(1, 2))  # (b n r)
        return torch.bmm(h, B.transpose(1, 2)) * scaling  # (b n o)
    h = einsum(x, A, "b ... i, b r i -> b ... r")
    return einsum(h, B, "b ... r, b o r -> b ... o") * scaling


def lora_delta_weight(A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """Merged weight update of one adapter, peft's ``get_delta_weight``: (o, r) @ (r, i) * s."""
    return (B @ A) * scaling


@dataclass
class LoraWeights:
    """LoRA factors for a batch of b adapters over the same modules.

    ``A[name]`` is (b, r, i) and ``B[name]`` is (b, o, r), for each adapted module path ``name``.
    Adapter k of the batch updates module ``name`` as ``W x + scaling * B[name][k] @ A[name][k] @ x``.
    """

    A: dict[str, Tensor]
    B: dict[str, Tensor]
    scaling: float

    kind = "lora"

    def __post_init__(self):
        if self.A.keys() != self.B.keys():
            raise ValueError("LoraWeights: A and B must cover the same modules")
        sizes = {t.shape[0] for t in [*self.A.values(), *self.B.values()]}
        if len(sizes) != 1:
            raise ValueError(f"LoraWeights: inconsistent batch sizes {sorted(sizes)}")

    @property
    def module_names(self) -> list[str]:
        return list(self.A)

    @property
    def rank(self) -> int:
        return next(iter(self.A.values())).shape[1]

    def __len__(self) -> int:
        return next(iter(self.A.values())).shape[0]

    def select(self, index: int | Sequence[int] | Tensor) -> LoraWeights:
        """Adapters at ``index`` (a list keeps the batch axis; repeats are allowed)."""
        if isinstance(index, int):
            index = [index]
        return LoraWeights(
            {k: v[index] for k, v in self.A.items()},
            {k: v[index] for k, v in self.B.items()},
            self.scaling,
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LoraWeights:
        return LoraWeights(
            {k: v.to(device=device, dtype=dtype) for k, v in self.A.items()},
            {k: v.to(device=device, dtype=dtype) for k, v in self.B.items()},
            self.scaling,
        )

    @staticmethod
    def cat(batches: Sequence[LoraWeights]) -> LoraWeights:
        """Concatenate adapter batches along b (they must cover the same modules and scaling)."""
        first = batches[0]
        for other in batches[1:]:
            if other.module_names != first.module_names or other.scaling != first.scaling:
                raise ValueError("LoraWeights.cat: batches differ in modules or scaling")
        return LoraWeights(
            {k: torch.cat([w.A[k] for w in batches]) for k in first.A},
            {k: torch.cat([w.B[k] for w in batches]) for k in first.B},
            first.scaling,
        )

    def forward_hook(self, name: str) -> Callable:
        """A ``register_forward_hook`` function adding this batch's LoRA update to module ``name``."""
        A, B, scaling = self.A[name], self.B[name], self.scaling

        def hook(module, args, output):
            x = args[0]
            return output + lora_delta(x, A.to(x.dtype), B.to(x.dtype), scaling)

        return hook
