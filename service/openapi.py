"""``/openapi.json``, generated from the routes and the pydantic models of ``service.schemas``.

Each view function carries its ``Operation`` (``@operation(...)`` under its route decorator);
``document(app)`` walks the app's URL map, so every route and method is in the document, with
the JSON schemas pydantic writes for the very models the routes validate with. Bounds that are
server settings (``x-setting`` in a schema) are written with the app's values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from service.schemas import MAX_JSON_DEPTH, Error

REF = "#/components/schemas/{model}"
DESCRIPTION = (
    "Turn task descriptions into adapters for a frozen base model (LoRA in PEFT's format, or "
    "bottleneck adapters in AdapterHub's, as the loaded checkpoint emits), and run "
    "OpenAI-compatible completions with them applied on the fly. Concurrent requests with "
    'different adapters share one batched forward pass. Every error is JSON: {"error": '
    '{"message", "type", "param", "code"}}. When the server is started with API keys, /v1 routes '
    "need 'Authorization: Bearer <key>' (or 'X-API-Key'). Request bodies are strict JSON objects "
    f"(no NaN or Infinity), at most {MAX_JSON_DEPTH} levels deep, in valid Unicode (a lone "
    "surrogate such as \\ud800 is a 400). Bounds marked x-setting are server settings, shown with "
    "this server's values. OPTIONS on a /v1 route answers JSON with the allowed methods (also in "
    "the Allow header). One request that fails never fails the others batched with it."
)
ERRORS = {  # status: when it is answered
    400: f"Invalid JSON (not strict JSON, nested deeper than {MAX_JSON_DEPTH} levels, or holding a "
    "lone UTF-16 surrogate), field, query parameter or id",
    401: "Missing or invalid API key",
    404: "Unknown adapter or model",
    413: "Request body over MAX_CONTENT_LENGTH (bodies over 4x that are refused by the server "
    "after their headers, with the same JSON error, and the connection is closed)",
    422: "Adapter does not fit the served base model",
    503: "Server busy (queue full, or the request would wait, or has waited, longer than "
    "MAX_QUEUE_WAIT_S for its turn: code 'overloaded', retry after Retry-After seconds) or "
    "models not loaded (code 'not_ready')",
    504: "Generation timed out",
}
RETRY_AFTER = {
    "description": "Seconds after which a retry may succeed (an estimate; on 'overloaded' only).",
    "schema": {"type": "integer", "minimum": 1},
}


@dataclass(frozen=True)
class Reply:
    """One documented answer: a JSON ``model`` (a tuple of models: one of them), or ``schema``
    under another ``media`` type; ``events`` adds the ``stream: true`` form."""

    description: str
    model: type[BaseModel] | tuple[type[BaseModel], ...] | None = None
    media: str = "application/json"
    schema: dict[str, Any] | None = None
    events: bool = False
    headers: dict[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    """What ``/openapi.json`` says about one route."""

    summary: str
    replies: dict[int, Reply]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path: dict[str, Any] = field(default_factory=dict)  # path parameter: its type
    errors: tuple[int, ...] = ()


def operation(summary: str, replies: dict[int, Reply], **details: Any) -> Callable:
    """Attach an ``Operation`` to a view function (put it under the route decorator)."""

    def attach(view: Callable) -> Callable:
        view.openapi = Operation(summary, replies, **details)
        return view

    return attach


class SchemaGenerator(GenerateJsonSchema):
    """Pydantic's JSON schemas without a title on every property."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


def json_schemas(models: list[type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """The components/schemas of ``models`` and of the models they use."""
    _, defs = models_json_schema(
        [(model, "validation") for model in models],
        ref_template=REF,
        schema_generator=SchemaGenerator,
    )
    return defs.get("$defs", {})


def _models(op: Operation) -> list[type[BaseModel]]:
    found = [op.body]  # a query model is written out as parameters
    for reply in op.replies.values():
        found += reply.model if isinstance(reply.model, tuple) else [reply.model]
    return [m for m in found if m is not None]


def _ref(model: type[BaseModel] | tuple[type[BaseModel], ...]) -> dict[str, Any]:
    if isinstance(model, tuple):
        return {"oneOf": [_ref(m) for m in model]}
    return {"$ref": REF.format(model=model.__name__)}


def _reply(reply: Reply) -> dict[str, Any]:
    schema = _ref(reply.model) if reply.model is not None else reply.schema or {}
    content = {reply.media: {"schema": schema}}
    if reply.events:
        content["text/event-stream"] = {
            "schema": {
                "type": "string",
                "description": "With stream: true: 'data: <chunk JSON>' events, then "
                "'data: [DONE]'.",
            }
        }
    out: dict[str, Any] = {"description": reply.description, "content": content}
    if reply.headers:
        out["headers"] = reply.headers
    return out


def _parameters(op: Operation, rule_arguments: set[str]) -> list[dict[str, Any]]:
    if set(op.path) != rule_arguments:
        raise ValueError(f"path parameters {sorted(rule_arguments)} != documented {op.path}")
    params = []
    for name, kind in op.path.items():
        schema = TypeAdapter(kind).json_schema(schema_generator=SchemaGenerator)
        description = schema.pop("description", None)
        params.append(
            {"name": name, "in": "path", "required": True, "description": description}
            | {"schema": schema}
        )
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF, schema_generator=SchemaGenerator)
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", ()),
                    "description": prop.pop("description", None),
                    "schema": prop,
                }
            )
    return [{k: v for k, v in p.items() if v is not None} for p in params]


def _operation(name: str, op: Operation, rule_arguments: set[str], secured: bool) -> dict:
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": re.sub(r"_(\w)", lambda m: m.group(1).upper(), name),
    }
    parameters = _parameters(op, rule_arguments)
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    errors = (*op.errors, 401) if secured else op.errors
    out["responses"] = {
        **{str(status): _reply(reply) for status, reply in op.replies.items()},
        **{str(status): {"$ref": f"#/components/responses/E{status}"} for status in sorted(errors)},
    }
    if not secured:
        out["security"] = [{}]
    return out


def _settings(node: Any, config: Mapping[str, Any]) -> None:
    """Write the served value of every bound named under ``x-setting``."""
    if isinstance(node, dict):
        for keyword, name in node.get("x-setting", {}).items():
            node[keyword] = config[name]
        for value in node.values():
            _settings(value, config)
    elif isinstance(node, list):
        for value in node:
            _settings(value, config)


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``: every rule but static files.

    Raises:
        ValueError: a route without ``@operation``, or whose path parameters it does not list.
    """
    paths: dict[str, dict[str, Any]] = {}
    models: list[type[BaseModel]] = [Error]
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        op = getattr(view, "openapi", None)
        if op is None:
            raise ValueError(f"route {rule.rule} ({rule.endpoint}) has no @operation")
        models += _models(op)
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        secured = rule.endpoint.startswith("api.")  # the api blueprint checks API keys
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                view.__name__, op, set(rule.arguments), secured
            )
    error = {"content": {"application/json": {"schema": _ref(Error)}}}
    responses = {f"E{status}": {"description": text, **error} for status, text in ERRORS.items()}
    responses["E503"]["headers"] = {"Retry-After": RETRY_AFTER}
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "hypergen adapter service",
            "version": "1.0.0",
            "description": DESCRIPTION,
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "responses": responses,
            "schemas": json_schemas(list(dict.fromkeys(models))),
        },
        "security": [{}, {"bearer": []}, {"apiKeyHeader": []}],
        "paths": paths,
    }
    _settings(doc, app.config)
    return doc
