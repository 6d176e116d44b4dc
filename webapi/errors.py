"""The one JSON error shape: ``{"error": "<code>", "message": "...", "details": [...]}``.

Only this module turns exceptions into HTTP responses.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from pydantic import BaseModel, Field, ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from chargewatch.readings import describe_errors
from chargewatch.stores import StorageUnavailable

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error response from chargewatch has this shape."""

    error: str = Field(description="Stable machine-readable code, e.g. invalid_readings, unauthorized.")
    message: str = Field(description="What went wrong, for a person.")
    details: list[Any] = Field(default_factory=list, description="Per-item or per-field specifics.")


class ApiError(Exception):
    """An error with its HTTP status, raised by routes and request helpers."""

    def __init__(
        self, status: int, error: str, message: str, details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.details = details or []
        self.headers = headers or {}


def error_response(status: int, error: str, message: str, details: list[Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": error, "message": message, "details": details or []})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return error_response(err.status, err.error, err.message, err.details, err.headers)

    @app.errorhandler(ValidationError)
    def _validation_error(err: ValidationError) -> Response:
        return error_response(422, "validation_failed", "the request did not validate",
                              [vars(e) for e in describe_errors(err)])

    @app.errorhandler(StorageUnavailable)
    def _storage_unavailable(err: StorageUnavailable) -> Response:
        logger.warning("storage unavailable: %s", err)
        return error_response(503, "storage_unavailable", str(err), headers={"Retry-After": "5"})

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        code = (err.name or "error").lower().replace(" ", "_")
        response = error_response(err.code or 500, code, err.description or err.name)
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")
