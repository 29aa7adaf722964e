"""Routes outside the versioned API: the web page, health, metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, current_app, send_from_directory

from service.metrics import CONTENT_TYPE
from service.runtime import get_runtime

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    """The page: describe a task, get its adapter, try a prompt with and without it."""
    return current_app.send_static_file("index.html")


@bp.get("/openapi.json")
def openapi():
    return send_from_directory(current_app.root_path, "openapi.json", mimetype="application/json")


@bp.get("/healthz")
def healthz():
    """Ready when the models are loaded; says which checkpoint is served and if it is UNTRAINED."""
    runtime = get_runtime()
    engine = runtime.engine  # EngineUnavailable -> 503 with the reason
    _, adapters = runtime.store.list(limit=1)
    return {
        "status": "ok",
        "untrained": engine.untrained,
        **engine.info(),
        "adapters_stored": adapters,
        "auth_required": bool(current_app.config["API_KEYS"]),
        "limits": {
            key.lower(): current_app.config[key]
            for key in (
                "MAX_DESCRIPTION_CHARS",
                "MAX_DESCRIPTIONS",
                "MAX_PROMPTS",
                "MAX_PROMPT_TOKENS",
                "MAX_TOKENS",
            )
        },
    }


@bp.get("/metrics")
def metrics():
    return get_runtime().metrics.render(), 200, {"Content-Type": CONTENT_TYPE}
