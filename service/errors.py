"""Every error is JSON, OpenAI style: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered with ``status`` and a message meant for the client.

    Args:
        status: HTTP status.
        message: what went wrong and, where possible, how to fix it.
        param: the request field at fault.
        code: a stable machine-readable code (e.g. ``model_not_found``).
        headers: extra response headers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers=None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


class EngineUnavailable(RuntimeError):
    """The models could not be loaded (answered 503 with the reason)."""


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    """The JSON error object (also written by the server itself, outside Flask)."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


def body_too_large_message(limit: int) -> str:
    return f"request body too large (the limit is {limit} bytes)"


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers=None
):
    return jsonify(error_body(status, message, param, code)), status, headers or {}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(err: APIError):
        return error_response(err.status, err.message, err.param, err.code, err.headers)

    @app.errorhandler(EngineUnavailable)
    def unavailable(err: EngineUnavailable):
        return error_response(503, str(err), code="not_ready")

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        headers = {k: v for k, v in err.get_headers() if k.lower() != "content-type"}
        code = (err.name or "error").lower().replace(" ", "_")
        message = err.description or err.name
        if err.code == 413:
            message = body_too_large_message(app.config.get("MAX_CONTENT_LENGTH"))
        return error_response(err.code or 500, message, code=code, headers=headers)

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        logger.exception("unhandled error")
        return error_response(
            500, f"internal error ({type(err).__name__}); see the server log", code="internal_error"
        )
