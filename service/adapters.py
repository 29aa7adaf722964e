"""Adapters by condition: found in the store, else made by the engine and stored.

``AdapterRegistry.get_or_create`` is the one way a description becomes an adapter: ``POST
/v1/adapters`` and completions that send ``adapter_description`` both go through it. The store
record (what ``GET /v1/adapters/<id>`` shows) is built here too, so the HTTP layer only checks
requests and shapes answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from service.engine import Engine
from service.metrics import Metrics
from service.store import AdapterStore


@dataclass
class Adapter:
    """One condition's adapter.

    Attributes:
        id: content address (checkpoint + condition + dtype, ``Engine.adapter_id``).
        record: the stored record; None while ``save`` is pending.
        weights: the tensors, when asked for (``with_weights``) or just made.
        created: True if this call made and stored it.
        save: for an adapter made with ``defer_save``: stores it, returns (record, created).
    """

    id: str
    record: dict[str, Any] | None
    weights: LoraWeights | BottleneckWeights | None = None
    created: bool = False
    save: Callable[[], tuple[dict[str, Any], bool]] | None = None


class AdapterRegistry:
    """The engine (makes adapters) and the store (keeps them) behind one lookup.

    Args:
        engine, store: the runtime's.
        metrics: counts lookups by source (``memory``, ``store``, ``generated``).
    """

    def __init__(self, engine: Engine, store: AdapterStore, metrics: Metrics):
        self.engine, self.store, self.metrics = engine, store, metrics

    def get_or_create(
        self,
        conditions: Sequence[Any],
        dtype: str = "float32",
        with_weights: bool = False,
        defer_save: bool = False,
    ) -> list[Adapter]:
        """The adapter of every (normalised) condition; the missing ones are made in one forward
        pass. A condition repeated in ``conditions`` is made once.

        Args:
            conditions: normalised conditions (``Engine.normalize``).
            dtype: the stored adapter's dtype.
            with_weights: also load the weights of adapters already stored.
            defer_save: leave new adapters unsaved and return their ``save``: the caller runs it
                when it suits (a completion may queue its jobs first, so the disk write overlaps
                the forward pass instead of delaying the first token).
        """
        ids = [self.engine.adapter_id(c, dtype) for c in conditions]
        found: dict[str, Adapter] = {}
        for adapter_id in dict.fromkeys(ids):
            if with_weights:
                weights, source = self.store.weights(adapter_id)
                if weights is not None:
                    found[adapter_id] = Adapter(adapter_id, None, weights)
                    self._count("store" if source == "disk" else source)
            else:
                record = self.store.get(adapter_id)
                if record is not None:
                    found[adapter_id] = Adapter(adapter_id, record)
                    self._count("store")
        todo = {i: c for i, c in zip(ids, conditions) if i not in found}
        made = self.engine.make_adapters(list(todo.values()), dtype) if todo else []
        for (adapter_id, condition), weights in zip(todo.items(), made):
            save = partial(self.put, adapter_id, condition, weights, dtype)
            adapter = Adapter(adapter_id, None, weights, created=True, save=save)
            if not defer_save:
                adapter.record, adapter.created = save()
                adapter.save = None
            found[adapter_id] = adapter
            self._count("generated" if adapter.created else "store")
        for _ in range(len(ids) - len(set(ids))):  # repeats are served by the first one
            self._count("store")
        return [found[i] for i in ids]

    def put(
        self, adapter_id: str, condition: Any, weights: LoraWeights | BottleneckWeights, dtype: str
    ) -> tuple[dict[str, Any], bool]:
        """Store ``weights`` under ``adapter_id`` with its record; (record, created).

        The record names the kind, its settings under the kind's name (``lora`` or
        ``bottleneck``) and the folder's format (``peft-lora`` or ``adapterhub``)."""
        engine = self.engine
        info = engine.info()
        record = {
            "object": "adapter",
            "condition": engine.condition_record(condition),
            "adapter_kind": engine.adapter_kind,
            "base_model": engine.base_model,
            "base_model_id": engine.base_model_id,
            "checkpoint": {k: info["checkpoint"][k] for k in ("name", "hash", "trained_steps")},
            "untrained": engine.untrained,
            engine.adapter_kind: engine.adapter_settings(dtype),
            "format": engine.adapter_format,
        }
        header = {
            "hypergen_id": adapter_id,
            "hypergen_checkpoint": engine.checkpoint_hash,
            "hypergen_condition": condition
            if isinstance(condition, str)
            else json.dumps(condition, sort_keys=True, ensure_ascii=False),
        }
        record, created = self.store.put(
            adapter_id, record, lambda folder: engine.save_adapter(weights, folder, dtype, header)
        )
        self.store.cache.put(adapter_id, weights)  # rounded to dtype: what the folder holds
        return record, created

    def find(self, adapter_id: str) -> LoraWeights | BottleneckWeights | None:
        """A stored adapter's weights by id, checked against the base model when read from disk.

        Raises:
            ValueError: the stored adapter does not fit the base model (it is not cached).
        """
        weights, source = self.store.weights(adapter_id)
        if weights is None:
            return None
        if source == "disk":
            try:
                self.engine.check_adapter(weights)
            except ValueError:
                self.store.cache.pop(adapter_id)
                raise
        self._count("store" if source == "disk" else source)
        return weights

    def _count(self, source: str) -> None:
        self.metrics.inc("hypergen_adapter_lookups_total", source=source)
