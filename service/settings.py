"""The service's settings and their defaults (``app.config`` keys; ``service.create_app`` reads
them from a config file, ``HYPERGEN_*`` variables or overrides). A module of its own so that what
the settings bound (``service.schemas``) can read the defaults without importing the app."""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    # models
    "CHECKPOINT": None,  # folder; None: the repo's trained default, else an untrained one
    "BASE_MODEL": None,  # None: the checkpoint's base model
    "DEVICE": "cpu",
    "DTYPE": "auto",  # the base model's; auto: bfloat16 on an AMX CPU, else float32
    "TORCH_THREADS": None,  # None: torch's default
    "PACKED_LINEAR": True,  # CPU fp32/bf16: linears on oneDNN-prepacked weights (faster decode)
    # store
    "STORE": None,  # folder; None: $HYPERGEN_HOME/store
    "LRU_SIZE": 64,  # adapters whose tensors stay in memory
    "STORE_SWEEP_S": 600,  # least seconds between sweeps of dead writers' temporary folders
    # batching
    "BATCHING": "continuous",  # or "window": fixed batches, newcomers wait for the next one
    "MAX_BATCH": 16,
    # wait this long for a batch to fill ... (None: 0 with continuous batching, where a late
    # request joins at the next step, 10 with window batching, where it waits for the next batch)
    "BATCH_WINDOW_MS": None,
    "BATCH_MAX_WAIT_MS": 100,  # ... or this long while requests being prepared will join it
    # continuous batching: while more requests wait than the batch has free places, newcomers
    # join once this many can join together (each join is a prefill that stalls the running
    # rows; 1: join at every step) ...
    "JOIN_ROWS": 4,
    "JOIN_STEPS": 4,  # ... or once they have waited this many decode steps with a free place
    "MAX_QUEUE": 256,
    "MAX_QUEUE_WAIT_S": 30,  # a completion not started this long after arriving gets 503
    "REQUEST_TIMEOUT_S": 300,
    # limits
    "API_KEYS": [],  # empty: no authentication
    "MAX_CONTENT_LENGTH": 1 << 20,  # bytes of request body
    "MAX_DESCRIPTION_CHARS": 2000,
    "MAX_DESCRIPTIONS": 16,  # per POST /v1/adapters
    "MAX_PROMPTS": 16,  # per POST /v1/completions
    "MAX_PROMPT_TOKENS": 1024,
    "MAX_TOKENS": 512,
    "DEFAULT_MAX_TOKENS": 64,
    "PAGE_SIZE": 20,
    "MAX_PAGE_SIZE": 100,
    # connections (waitress, ``hypergen serve``): idle or half-sent connections must not lock
    # others out, so there is room for many, and the idle ones are closed soon
    "THREADS": 32,  # worker threads: requests handled (and batched) at once
    "RESERVED_THREADS": 4,  # of them, kept for requests other than POSTs (list, download, ...)
    "CONNECTION_LIMIT": 500,  # open connections; beyond it new ones wait in the backlog
    "CHANNEL_TIMEOUT_S": 30,  # a connection idle (or stuck mid-request) this long is closed
    "CLEANUP_INTERVAL_S": 5,  # how often idle connections are looked for
    "BACKLOG": 1024,  # connections the OS queues before they are accepted
}

BATCHING_MODES = ("continuous", "window")
