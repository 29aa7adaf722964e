"""One serving batch's adapters, whatever their kinds, in the layout the serving hooks want.

A batch mixes requests whose adapters come from the loaded checkpoint and from the store (made
by other checkpoints, possibly of the other kind) with requests that have none. ``stack`` splits
the rows by kind and stacks each kind on its own (``service.batched_lora.BatchedLora``,
``service.batched_bottleneck.BatchedBottleneck``: a row of another kind, or without an adapter,
gets zeros there, which add exactly nothing); when both kinds are present, ``MixedBatch`` applies
both at once. LoRA adapts linear layers and bottlenecks follow blocks, so no module is adapted by
both, and every row's math is its own adapter's alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from service.batched_bottleneck import BatchedBottleneck
from service.batched_lora import BatchedLora

# adapter kind -> the class stacking that kind's rows
STACKERS = {"lora": BatchedLora, "bottleneck": BatchedBottleneck}


class MixedBatch:
    """Batches of several kinds over the same rows, applied together (each module by its one owner).

    Args:
        parts: per-kind batches of equal length whose modules do not overlap.
    """

    def __init__(self, parts: Sequence[BatchedLora | BatchedBottleneck]):
        if len({len(p) for p in parts}) != 1:
            raise ValueError("MixedBatch: the parts must have the same rows")
        self.parts = list(parts)
        self._owner: dict[str, BatchedLora | BatchedBottleneck] = {}
        for part in self.parts:
            for name in part.module_names:
                if name in self._owner:
                    raise ValueError(f"MixedBatch: module {name} is adapted by two kinds")
                self._owner[name] = part

    @property
    def module_names(self) -> list[str]:
        return list(self._owner)

    def __len__(self) -> int:
        return len(self.parts[0])

    def select(self, rows: Tensor | Sequence[int]) -> MixedBatch:
        return MixedBatch([part.select(rows) for part in self.parts])

    def forward_hook(self, name: str):
        return self._owner[name].forward_hook(name)


def stack(
    adapters: Sequence[LoraWeights | BottleneckWeights | None],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> BatchedLora | BatchedBottleneck | MixedBatch | None:
    """One row per entry of ``adapters`` (each a one-adapter weights object, or None for the bare
    model); None when no row has an adapter."""
    unknown = {a.kind for a in adapters if a is not None} - set(STACKERS)
    if unknown:
        raise ValueError(f"no serving batch for adapter kind(s) {sorted(unknown)}")
    parts = []
    for kind, batched in STACKERS.items():
        rows = [a if a is not None and a.kind == kind else None for a in adapters]
        part = batched.stack(rows, dtype=dtype, device=device)
        if part is not None:
            parts.append(part)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MixedBatch(parts)
