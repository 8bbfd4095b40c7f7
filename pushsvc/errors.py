"""The one mapper from errors to the wire: ``application/problem+json`` or a WS close."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pushsvc.exceptions import PushError

log = logging.getLogger("pushsvc")

PROBLEM_JSON = "application/problem+json"
_INTERNAL_ERROR_BODY = json.dumps(
    {
        "type": "https://pushsvc.dev/problems/internal-error",
        "title": "Internal error",
        "status": 500,
    }
)


def problem_response(exc: PushError) -> Response:
    return Response(
        json.dumps(exc.problem_body()),
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
    return internal_error_response()


def internal_error_response() -> Response:
    """500 with a problem body that says nothing about the failure (it is logged)."""
    return Response(_INTERNAL_ERROR_BODY, status_code=500, media_type=PROBLEM_JSON)
