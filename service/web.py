"""Routes outside the versioned API: the web page, health, metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, current_app

from service import schemas
from service.metrics import CONTENT_TYPE
from service.openapi import Reply, document, operation
from service.runtime import get_runtime

bp = Blueprint("web", __name__)


@bp.get("/")
@operation("The web page", {200: Reply("HTML", media="text/html", schema={"type": "string"})})
def index():
    """The page: describe a task, get its adapter, try a prompt with and without it."""
    return current_app.send_static_file("index.html")


@bp.get("/openapi.json")
@operation("This document", {200: Reply("OpenAPI 3.1", schema={"type": "object"})})
def openapi():
    """Generated once per app from the routes and ``service.schemas`` (``service.openapi``)."""
    doc = current_app.extensions.get("hypergen.openapi")
    if doc is None:
        doc = current_app.extensions["hypergen.openapi"] = document(current_app)
    return doc


@bp.get("/healthz")
@operation(
    "Readiness; names the checkpoint and whether it is UNTRAINED",
    {200: Reply("Ready", schemas.Health)},
    errors=(503,),
)
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
@operation(
    "Prometheus metrics (text format 0.0.4)",
    {200: Reply("Metrics", media="text/plain", schema={"type": "string"})},
)
def metrics():
    return get_runtime().metrics.render(), 200, {"Content-Type": CONTENT_TYPE}
