"""The adapter service: HTTP API, adapter store, batched completions with per-request adapters.

    app = create_app()              # config: defaults < config file < HYPERGEN_* env < overrides
    hypergen serve --port 8000      # production: waitress (service/server.py)

Nothing loads at import or in ``create_app``: the models, the store and the batcher are built on
first use (``service.runtime``); ``hypergen serve`` loads them before it starts listening.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from hypergen.config import DTYPE_NAMES, check_dtype
from hypergen.precision import AUTO
from service.settings import BATCHING_MODES, DEFAULTS

_POSITIVE_INTS = (
    "LRU_SIZE",
    "MAX_BATCH",
    "JOIN_ROWS",
    "MAX_QUEUE",
    "MAX_CONTENT_LENGTH",
    "MAX_DESCRIPTION_CHARS",
    "MAX_DESCRIPTIONS",
    "MAX_PROMPTS",
    "MAX_PROMPT_TOKENS",
    "MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "THREADS",
    "CONNECTION_LIMIT",
    "CHANNEL_TIMEOUT_S",
    "CLEANUP_INTERVAL_S",
    "BACKLOG",
)


def create_app(
    test_config: Mapping[str, Any] | None = None,
    engine=None,
    overrides: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the Flask app.

    Args:
        test_config: used instead of the config file and the environment (tests).
        engine: a ready ``service.engine.Engine`` (tests); None loads one on first use.
        overrides: applied last (``hypergen serve`` flags); ``CONFIG_FILE`` here or in
            ``$HYPERGEN_CONFIG_FILE`` names a JSON or TOML config file.
    """
    app = Flask(__name__)
    # "/v1//adapters" is a 404 (JSON), not an HTML redirect to "/v1/adapters"
    app.url_map.merge_slashes = False
    app.config.from_mapping(DEFAULTS)
    overrides = dict(overrides or {})
    if test_config is None:
        config_file = overrides.pop("CONFIG_FILE", None) or os.environ.get("HYPERGEN_CONFIG_FILE")
        if config_file:
            _load_file(app, config_file)
        app.config.from_prefixed_env("HYPERGEN")
    else:
        app.config.from_mapping(test_config)
    app.config.from_mapping(overrides)
    _check_config(app.config)

    from service import api, web
    from service.errors import register_error_handlers
    from service.runtime import init_app

    init_app(app, engine)
    register_error_handlers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(web.bp)
    _count_requests(app)
    return app


def _load_file(app: Flask, path: str) -> None:
    if Path(path).suffix == ".toml":
        try:
            import tomllib
        except ImportError as err:  # Python 3.10
            raise ValueError(f"{path}: TOML config files need Python 3.11+; use JSON") from err

        app.config.from_file(path, load=tomllib.load, text=False)
    else:
        app.config.from_file(path, load=json.load)


def _check_config(config) -> None:
    """Coerce and validate; a ValueError names the key (typos must not pass silently)."""
    keys = config["API_KEYS"]
    if isinstance(keys, str):  # HYPERGEN_API_KEYS=key1,key2
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(
            "API_KEYS must be a list of non-empty strings (or one comma-separated string)"
        )
    config["API_KEYS"] = keys
    for key in _POSITIVE_INTS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key in ("BATCH_WINDOW_MS", "BATCH_MAX_WAIT_MS", "REQUEST_TIMEOUT_S", "STORE_SWEEP_S"):
        value = config[key]
        if value is None and key == "BATCH_WINDOW_MS":  # the batching mode's default
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    if config["BATCHING"] not in BATCHING_MODES:
        raise ValueError(
            f"BATCHING must be one of {', '.join(BATCHING_MODES)}, got {config['BATCHING']!r}"
        )
    wait = config["MAX_QUEUE_WAIT_S"]
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait > 0:
        raise ValueError(f"MAX_QUEUE_WAIT_S must be a number > 0, got {wait!r}")
    steps = config["JOIN_STEPS"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"JOIN_STEPS must be an integer >= 0, got {steps!r}")
    reserved = config["RESERVED_THREADS"]
    if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0:
        raise ValueError(f"RESERVED_THREADS must be an integer >= 0, got {reserved!r}")
    if reserved >= config["THREADS"]:
        raise ValueError(
            f"RESERVED_THREADS ({reserved}) must be less than THREADS ({config['THREADS']})"
        )
    if config["DEFAULT_MAX_TOKENS"] > config["MAX_TOKENS"]:
        raise ValueError("DEFAULT_MAX_TOKENS must not exceed MAX_TOKENS")
    check_dtype(config["DTYPE"], "DTYPE", (*DTYPE_NAMES, AUTO))
    packed = config["PACKED_LINEAR"]
    if not isinstance(packed, bool):
        raise ValueError(  # noqa: TRY004 - every config error is a ValueError
            f"PACKED_LINEAR must be true or false, got {packed!r}"
        )


def _count_requests(app: Flask) -> None:
    """Requests and latencies per route template (not raw path: bounded label values)."""

    @app.before_request
    def start_timer():
        g.start = time.perf_counter()

    @app.after_request
    def record(response):
        from service.runtime import get_runtime

        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics = get_runtime().metrics
        metrics.inc(
            "hypergen_requests_total",
            route=route,
            method=request.method,
            status=response.status_code,
        )
        if "start" in g:
            metrics.observe(
                "hypergen_request_duration_seconds", time.perf_counter() - g.start, route=route
            )
        return response
