"""Every error leaves as `{"error": "..."}` with the status that says whose fault it was; on the
OpenAI-compatible `/v1/*` endpoints, in OpenAI's shape (`{"error": {"message", "type", ...}}`),
which OpenAI clients parse into their exceptions."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from photofield_ai.batcher import (
    BatcherClosedError,
    BatchFailedError,
    QueueFullError,
    QueueTimeoutError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"
# Status recorded for a request whose client left (nginx's "client closed request"); the
# answer is never delivered, it only labels the metric.
CLIENT_CLOSED_REQUEST = 499


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,  # OpenAI's error code, on /v1/*
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.code = code


class BodyTooLargeError(ApiError):
    """Raised from inside `receive` by the body limit; Starlette turns it into the 413."""


OPENAI_PREFIX = "/v1/"
# OpenAI's error codes for the statuses that have one.
_OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large"}


def error_payload(path: str, status: int, message: str, code: str | None = None) -> object:
    """The error body for `path`: ours, or OpenAI's on /v1/*."""
    if not path.startswith(OPENAI_PREFIX):
        return {"error": message}
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": None,
            "code": code or _OPENAI_CODES.get(status),
        }
    }


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    path: str = "",
    code: str | None = None,
) -> Response:
    return JSONResponse(error_payload(path, status, message, code), status, headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers, request.url.path, exc.code)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: f"not found: {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }
    message = messages.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message, dict(exc.headers or {}), request.url.path)


async def handle_batcher_error(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if isinstance(exc, QueueFullError | QueueTimeoutError | BatcherClosedError):
        return error_response(503, str(exc), {"Retry-After": RETRY_AFTER_S}, path, "overloaded")
    if isinstance(exc, BatchFailedError):
        return error_response(500, str(exc), path=path)
    raise exc


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """A client that leaves mid-upload is normal traffic: one quiet line and a counter."""
    engine = request.app.state.engine
    endpoint = request.scope.get("route_path") or request.url.path
    engine.metrics.http_client_disconnects.labels(endpoint).inc()
    log.info("%s %s: the client went away before the answer", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error", path=request.url.path)


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    QueueFullError: handle_batcher_error,
    QueueTimeoutError: handle_batcher_error,
    BatcherClosedError: handle_batcher_error,
    BatchFailedError: handle_batcher_error,
    ClientDisconnect: handle_client_disconnect,
    Exception: handle_unexpected,
}
