"""What the per-row stacked adapters share: the one-adapter-per-row rule of their ``stack``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

A = TypeVar("A")


def present_rows(adapters: Sequence[A | None]) -> list[A]:
    """The rows that have an adapter; each must be a single adapter (a batch of one)."""
    present = [a for a in adapters if a is not None]
    for a in present:
        assert len(a) == 1, f"stack takes one adapter per row, got a batch of {len(a)}"
    return present
