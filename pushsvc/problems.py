"""The one renderer of errors for the wire. A ``PushError`` (``pushsvc.exceptions``) knows
its HTTP status, its WebSocket close code and its problem type; this module turns it into

- an ``application/problem+json`` response (HTTP requests, and SSE or long-poll before
  the stream starts): ``problem_response``, and the app's exception handlers;
- a refused WebSocket upgrade: the same status and body through ASGI's websocket denial
  response where the server offers it, else a close with the error's code:
  ``deny_websocket``;
- on an open WebSocket, an ``error`` frame for a request that failed (the connection
  stays): ``error_frame``; or the close for a frame that cannot be understood:
  ``close_reason`` with the error's ``close_code``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from pushsvc.exceptions import PushError
from pushsvc.protocol.frames import ws_control

log = logging.getLogger("pushsvc")

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPES = "https://pushsvc.dev/problems/"
MAX_CLOSE_REASON = 120  # characters; RFC 6455 allows 123 bytes
_INTERNAL_ERROR_BODY = json.dumps(
    {"type": PROBLEM_TYPES + "internal-error", "title": "Internal error", "status": 500}
)


def problem_type(exc: PushError) -> str:
    return PROBLEM_TYPES + exc.problem


def problem_body(exc: PushError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(exc),
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    body.update(exc.extra)
    return body


# --- HTTP ------------------------------------------------------------------------------


def problem_response(exc: PushError) -> Response:
    return Response(
        json.dumps(problem_body(exc)),
        status_code=exc.status,
        media_type=PROBLEM_JSON,
        headers=exc.headers,
    )


async def push_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PushError)  # registered for PushError only
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.error(exc)
    return problem_response(exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejected(exc.status_code, "about:blank")
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": str(exc.detail),
        "status": exc.status_code,
    }
    return Response(
        json.dumps(body), status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:  # counted with the refusals: the 5xx error-rate alert sees it
        metrics.rejected(500, "internal-error")
    return internal_error_response()


def internal_error_response() -> Response:
    """500 with a problem body that says nothing about the failure (it is logged)."""
    return Response(_INTERNAL_ERROR_BODY, status_code=500, media_type=PROBLEM_JSON)


# --- WebSocket -------------------------------------------------------------------------


async def deny_websocket(scope: Scope, send: Send, exc: PushError) -> None:
    """Refuse an upgrade: the HTTP status and problem body where the server supports
    ASGI's websocket denial response (uvicorn does), else a close with the error's code."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(problem_body(exc)).encode()
        headers = [(b"content-type", PROBLEM_JSON.encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send(
            {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": exc.close_code, "reason": close_reason(exc)})


def close_reason(exc: PushError) -> str:
    return exc.detail[:MAX_CLOSE_REASON]


def error_frame(exc: PushError, **fields: Any) -> str:
    """The ``error`` frame answering a failed request on an open WebSocket; ``fields`` name
    the request (``op`` and its ``id`` or ``channels``)."""
    return ws_control(
        "error",
        code=exc.close_code,
        status=exc.status,
        detail=exc.detail,
        **fields,
        problem=problem_type(exc),
    )
