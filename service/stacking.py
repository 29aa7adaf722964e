"""What the per-row stacked adapters share: the one-adapter-per-row rule of their ``stack`` and
the walk that zero-fills the modules a row's adapter lacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

A = TypeVar("A")


def present_rows(adapters: Sequence[A | None]) -> list[A]:
    """The rows that have an adapter; each must be a single adapter (a batch of one)."""
    present = [a for a in adapters if a is not None]
    for a in present:
        assert len(a) == 1, f"stack takes one adapter per row, got a batch of {len(a)}"
    return present


def stack_modules(
    adapters: Sequence[A | None],
    names: Sequence[str],
    covers: Callable[[A, str], bool],
    factors: Callable[[A, str], tuple[Tensor, ...]],
    zeros: Callable[[str], tuple[Tensor, ...]],
    dtype: torch.dtype,
    device: torch.device | str,
) -> dict[str, tuple[Tensor, ...]]:
    """For each module ``name``: its factors over all rows, each concatenated along the batch.

    A row contributes ``factors(adapter, name)`` (padded to the batch's size) where its adapter
    covers ``name``, and ``zeros(name)`` (factors that add nothing) where it has no adapter or
    none on that module.
    """
    stacked = {}
    for name in names:
        rows = [
            factors(a, name) if a is not None and covers(a, name) else zeros(name) for a in adapters
        ]
        # one row (a lone request, the usual prefill) needs no copy: per-call overhead is most
        # of what stacking costs next to a first token
        stacked[name] = tuple(
            (rows[0][k] if len(rows) == 1 else torch.cat([row[k] for row in rows])).to(
                device, dtype
            )
            for k in range(len(rows[0]))
        )
    return stacked
