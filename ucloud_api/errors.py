"""Every error the API returns, mapped in one place to one JSON shape::

    {"error": {"status": 400, "code": "invalid", "field": "specs.cpu",
               "message": "specs.cpu: must be at least 1"}}

``field`` names the culprit (a body field such as ``specs.ram``, a query parameter, a
header such as ``X-Ucloud-Seed``, or ``body``), or is ``null`` when no single field is
to blame (an unknown path, etcd unreachable). The same shape is used for 400, 401,
404, 405, 409, 413, 415, 500 and 503, so a client needs one error parser.

Blueprints and services raise exceptions; nothing else in the API builds an error
response.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from flask import Flask, Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from ucloud_common.accounts import AccountError
from ucloud_common.models import ModelError
from ucloud_common.store import StoreError, Unavailable

from .metrics import etcd_error
from .networks import Exhausted
from .services import InvalidState, NotFound, ServiceError

log = logging.getLogger(__name__)

_CODES = {
    400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "too_large", 415: "unsupported_media_type", 500: "internal", 503: "unavailable",
}


class ApiError(Exception):
    """An error found while parsing or authenticating a request."""

    def __init__(self, status: int, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or _CODES.get(status, "error")


def error_response(status: int, message: str, field: str | None = None, code: str | None = None,
                   details: list[dict[str, Any]] | None = None) -> Response:
    error: dict[str, Any] = {"status": status, "code": code or _CODES.get(status, "error"),
                             "field": field, "message": message}
    if details:
        error["details"] = details
    response = jsonify({"error": error})
    response.status_code = status
    return response


def field_of(loc: tuple[Any, ...]) -> str:
    """pydantic's ``('specs', 'ram')`` -> ``"specs.ram"``; the whole body -> ``"body"``."""
    return ".".join(str(part) for part in loc) or "body"


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        field = field_of(tuple(err["loc"]))
        if err["type"] == "json_invalid":
            message = f"body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
            field = "body"
        elif err["type"] == "extra_forbidden":
            message = f"{field}: unknown field"
        elif err["type"] == "missing":
            message = f"{field}: missing"
        else:
            message = f"{field}: {err['msg']}"
        details.append({"field": field, "message": message})
    return details


def register(app: Flask) -> None:
    """Install the handlers that turn every exception into the one error shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.message, exc.field, exc.code)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'X-Ucloud-Seed realm="ucloud"'
        return response

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        details = _validation_details(exc)
        first = details[0]
        return error_response(400, first["message"], first["field"], details=details)

    @app.errorhandler(ModelError)
    def _model(exc: ModelError) -> Response:
        return error_response(400, str(exc), exc.field)

    @app.errorhandler(AccountError)
    def _account(exc: AccountError) -> Response:
        return error_response(400, str(exc), exc.field)

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Response:
        return error_response(404, str(exc), exc.field)

    @app.errorhandler(InvalidState)
    def _invalid_state(exc: InvalidState) -> Response:
        return error_response(409, str(exc), exc.field)

    @app.errorhandler(Exhausted)
    def _exhausted(exc: Exhausted) -> Response:
        return error_response(409, str(exc), exc.field, code="exhausted")

    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError) -> Response:  # pragma: no cover - every subclass has its own handler
        return error_response(500, str(exc), exc.field)

    @app.errorhandler(Unavailable)
    def _unavailable(exc: Unavailable) -> Response:
        log.warning("etcd unavailable: %s", exc)
        etcd_error(exc)
        response = error_response(503, "the cluster store (etcd) is unavailable; retry later")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "no such endpoint (see /openapi.json or /docs)",
            405: f"method not allowed here (allowed: {', '.join(getattr(exc, 'valid_methods', None) or [])})",
            413: "request body too large",
        }
        field = "body" if status == 413 else None
        response = error_response(status, messages.get(status, exc.description or exc.name), field)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Response:
        log.exception("unhandled error")
        if isinstance(exc, (grpc.RpcError, StoreError)):
            etcd_error(exc)
        return error_response(500, "internal error (logged on the server)")
