"""The service's long-lived parts, built lazily into ``app.extensions["hypergen"]``.

``init_app(app)`` attaches a ``Runtime``; the engine (models), the store and the batcher are
built on first use, once, under a lock, from ``app.config``. Tests pass a ready ``engine``.
"""

from __future__ import annotations

import logging
import os
import threading

from flask import Flask, current_app

from hypergen.layout import store_dir
from service.adapters import AdapterRegistry
from service.batcher import Batcher, JobQueue
from service.continuous import ContinuousBatcher
from service.engine import Engine
from service.errors import EngineUnavailable
from service.metrics import Metrics, service_metrics
from service.store import AdapterStore

logger = logging.getLogger(__name__)


class Runtime:
    """Engine + store + adapter registry + batcher + metrics of one app.

    Args:
        config: the app's config (read when a part is first built).
        engine: a ready engine (tests); None loads one from the config on first use.
    """

    def __init__(self, config, engine: Engine | None = None):
        self.config = config
        self._engine, self._store, self._batcher = engine, None, None
        self._adapters: AdapterRegistry | None = None
        self._lock = threading.RLock()
        self.metrics: Metrics = service_metrics(
            queue_depth=lambda: self._batcher.waiting if self._batcher else 0,
            running_jobs=lambda: self._batcher.running if self._batcher else 0,
            cached_adapters=lambda: len(self._store.cache) if self._store else 0,
        )

    @property
    def engine(self) -> Engine:
        """The engine, loaded on the batcher's thread (the process's only torch thread, see
        ``service.batcher``), which also makes its adapters (``Engine.compute``)."""
        with self._lock:
            if self._engine is None:
                jobs = self.batcher
                try:
                    engine = jobs.call(self._load_engine)
                except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
                    raise EngineUnavailable(f"models failed to load: {err}") from err
                engine.compute = jobs.call
                self._engine = engine
            return self._engine

    def _load_engine(self) -> Engine:
        if self.config.get("TORCH_THREADS"):
            import torch

            torch.set_num_threads(int(self.config["TORCH_THREADS"]))
        return Engine.load(
            self.config["CHECKPOINT"],
            self.config["BASE_MODEL"],
            self.config["DEVICE"],
            self.config["DTYPE"],
            packed_linear=self.config["PACKED_LINEAR"],
        )

    @property
    def core_to_spare(self) -> bool:
        """Whether a CPU is free beside the engine's torch threads (always, when the engine runs
        on an accelerator). Only then may a request thread's own work, such as writing a new
        adapter, run beside a forward pass: where every CPU runs the forward pass, the OpenMP
        team waits for the thread that lost its CPU (measured on 2 cores with 2 torch threads: a
        new adapter's write beside its prefill added ~20 ms, before it ~8)."""
        import torch

        if self.engine.device.type != "cpu":
            return True
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return (cpus or 1) > torch.get_num_threads()

    @property
    def engine_loaded(self) -> bool:
        return self._engine is not None

    @property
    def store(self) -> AdapterStore:
        with self._lock:
            if self._store is None:
                self._store = AdapterStore(
                    store_dir(self.config["STORE"]),
                    cache_size=int(self.config["LRU_SIZE"]),
                    sweep_interval_s=float(self.config["STORE_SWEEP_S"]),
                )
            return self._store

    @property
    def adapters(self) -> AdapterRegistry:
        """Adapters by condition (``service.adapters``); builds the engine and store if needed."""
        with self._lock:
            if self._adapters is None:
                self._adapters = AdapterRegistry(self.engine, self.store, self.metrics)
            return self._adapters

    @property
    def batcher(self) -> JobQueue:
        """The ``BATCHING`` config's batcher: ``continuous`` (jobs join and leave a running
        batch between decode steps) or ``window`` (fixed batches). Its worker thread runs every
        torch computation of the service (``JobQueue.call``)."""
        with self._lock:
            if self._batcher is None:
                settings = {
                    "max_batch": int(self.config["MAX_BATCH"]),
                    "window_s": self.batch_window_ms / 1000,
                    "max_wait_s": float(self.config["BATCH_MAX_WAIT_MS"]) / 1000,
                    "max_queue": int(self.config["MAX_QUEUE"]),
                    "max_queue_wait_s": float(self.config["MAX_QUEUE_WAIT_S"]),
                    "on_batch": self._record_batch,
                    "on_prefill": lambda jobs: self.metrics.observe("hypergen_prefill_size", jobs),
                }
                # Built before the engine, which it loads; the engine's methods are looked up per
                # batch or decoder (jobs exist only once it is loaded; tests patch them).
                if self.config["BATCHING"] == "window":
                    self._batcher = Batcher(
                        lambda jobs: self._engine.complete(
                            jobs, between_steps=self._batcher.run_calls
                        ),
                        **settings,
                    )
                else:
                    self._batcher = ContinuousBatcher(
                        lambda: self._engine.decoder(),
                        join_rows=int(self.config["JOIN_ROWS"]),
                        join_steps=int(self.config["JOIN_STEPS"]),
                        **settings,
                    )
                if self._engine is not None:  # a ready engine (tests): its adapters made here too
                    self._engine.compute = self._batcher.call
            return self._batcher

    @property
    def batch_window_ms(self) -> float:
        """``BATCH_WINDOW_MS``, or its default for the batching mode: with continuous batching
        an idle worker starts at once (0; requests already announced are still waited for, up
        to ``BATCH_MAX_WAIT_MS``), since one arriving later joins at the next decode step; with
        window batching it waits 10 ms, since one arriving later waits for the whole batch."""
        window = self.config["BATCH_WINDOW_MS"]
        if window is None:
            return 10.0 if self.config["BATCHING"] == "window" else 0.0
        return float(window)

    def _record_batch(self, size: int, seconds: float) -> None:
        self.metrics.observe("hypergen_batch_size", size)
        self.metrics.observe("hypergen_batch_duration_seconds", seconds)

    def close(self) -> None:
        """Stop the batcher and close the store (tests, server shutdown)."""
        with self._lock:
            if self._batcher is not None:
                if self._engine is not None and self._engine.compute == self._batcher.call:
                    del self._engine.compute  # back to inline: a ready engine may outlive the app
                self._batcher.close()
            if self._store is not None:
                self._store.close()


def init_app(app: Flask, engine: Engine | None = None) -> Runtime:
    runtime = Runtime(app.config, engine)
    app.extensions["hypergen"] = runtime
    return runtime


def get_runtime() -> Runtime:
    return current_app.extensions["hypergen"]
