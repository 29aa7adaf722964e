"""One serving batch's adapters, whatever their kinds, in the layout the serving hooks want.

A batch mixes requests whose adapters come from the loaded checkpoint and from the store (made
by other checkpoints, possibly of the other kind) with requests that have none. ``stack`` splits
the rows by kind and stacks each kind on its own (``service.batched_lora.BatchedLora``,
``service.batched_bottleneck.BatchedBottleneck``: a row of another kind, or without an adapter,
gets zeros there, which add exactly nothing); when both kinds are present, ``MixedBatch`` applies
both at once. LoRA adapts linear layers and bottlenecks follow blocks, so no module is adapted by
both, and every row's math is its own adapter's alone.

``RowAdapters`` keeps a stack aligned with the rows of a batch that rows join and leave between
decode steps (continuous batching).
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


class RowAdapters:
    """The adapters of a batch whose rows join and leave between steps (continuous batching).

    ``join`` and ``leave`` are ``hypergen.decoding.Decoder``'s ``on_join`` and ``on_leave``;
    ``batch(rows)`` (its forward pass's ``adapters_for``) is the stack of ``rows`` in that order.
    The last two stacks are kept (the running rows' and the newcomers' prefill), so rows are not
    stacked twice: a batch that repeats one is reused, rows that left are dropped with ``select``,
    and LoRA rows joining (the running rows, then the newcomers) are concatenated
    (``BatchedLora.cat``); other joins are stacked anew.

    Args:
        dtype, device: of the stacked tensors (``stack``).
    """

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.dtype, self.device = dtype, device
        self._adapters: dict[int, LoraWeights | BottleneckWeights | None] = {}
        self._recent: list[tuple[tuple[int, ...], object]] = []

    def join(self, ids: Sequence[int], jobs: Sequence) -> None:
        for row, job in zip(ids, jobs):
            self._adapters[row] = job.adapter

    def leave(self, ids: Sequence[int]) -> None:
        for row in ids:
            self._adapters.pop(row, None)

    def batch(self, rows: Tensor):
        key = tuple(rows.tolist())
        stacked = self._reuse(key)
        if stacked is False:
            stacked = stack(
                [self._adapters[row] for row in key], dtype=self.dtype, device=self.device
            )
        self._recent = [(key, stacked), *self._recent[:1]]
        return stacked

    def _reuse(self, key: tuple[int, ...]):
        """``key``'s stack made from the recent ones, or False when it must be stacked."""
        for before, stacked in self._recent:
            if key == before:
                return stacked
        # running rows (some may have left) followed by one recent batch whole (the newcomers)
        for k, (tail, tail_stacked) in enumerate(self._recent):
            head = key[: len(key) - len(tail)]
            if not head or len(tail) > len(key) or key[len(head) :] != tail:
                continue
            for j, (before, stacked) in enumerate(self._recent):
                where = {row: i for i, row in enumerate(before)}
                if j == k or not all(row in where for row in head):
                    continue
                if stacked is not None and head != before:
                    stacked = stacked.select([where[row] for row in head])
                parts = [(stacked, len(head)), (tail_stacked, len(tail))]
                if all(part is None or isinstance(part, BatchedLora) for part, _ in parts):
                    return BatchedLora.cat(parts)
                return False
        for before, stacked in self._recent:  # rows left
            where = {row: i for i, row in enumerate(before)}
            if all(row in where for row in key):
                return stacked.select([where[row] for row in key]) if stacked else None
        return False
