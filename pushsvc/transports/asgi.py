"""The ASGI side the transports and the HTTP API share: the app's state from a scope, the
query and headers of a scope without building Starlette's objects, and an endpoint run as
a plain ASGI app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pushsvc.auth import Authenticator
from pushsvc.exceptions import PushError
from pushsvc.hub import Hub
from pushsvc.problems import (
    internal_error_response,
    problem_response,
    push_error_handler,
    unexpected_error_handler,
)
from pushsvc.settings import Settings

log = logging.getLogger("pushsvc")

_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class ClientGone(Exception):
    """The client disconnected before its request was read: nothing is answered."""


def state(scope: Any) -> tuple[Settings, Hub, Authenticator]:
    # Starlette's State keeps its attributes in the dict ``_state``; reading them as
    # attributes goes through a Python ``__getattr__`` each (three per request)
    st = scope["app"].state._state
    return st["settings"], st["hub"], st["auth"]


async def serve_endpoint(
    endpoint: Callable[[Request], Awaitable[Response]], scope: Scope, receive: Receive, send: Send
) -> None:
    """Run a Starlette endpoint as a plain ASGI app, answering its errors with problem
    bodies as the app's exception handlers do. ``pushsvc.app`` dispatches the
    subscription endpoints (SSE, long-poll) this way when no CORS middleware is
    configured: the connection then holds no frames of the routing and middleware stack
    for as long as it is open, and a poll costs a quarter less CPU."""
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except PushError as exc:
        response = await push_error_handler(request, exc)
    except Exception as exc:
        response = await unexpected_error_handler(request, exc)
    del request  # not kept alive by this frame while a stream is open
    await response(scope, receive, send)


async def answer_json(
    handler: Callable[[Scope, Receive], Awaitable[bytes]],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Answer a request with the JSON body ``handler`` returns, or with the problem body
    of the error it raises (counted in the metrics, as the app's exception handlers do),
    as a plain ASGI app: the request path without Starlette's request, response and
    middleware objects."""
    try:
        body = await handler(scope, receive)
    except ClientGone:
        return
    except PushError as exc:
        scope["app"].state.metrics.error(exc)
        await problem_response(exc)(scope, receive, send)
        return
    except Exception:
        log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
        scope["app"].state.metrics.rejected(500, "internal-error")
        await internal_error_response()(scope, receive, send)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Query(dict[str, list[str]]):
    """A query string's parameters, with the ``get``/``getlist`` that Starlette's
    ``QueryParams`` offers: the last value (as Starlette), every value."""

    def get(self, key: str, default: Any = None) -> Any:
        values = dict.get(self, key)
        return values[-1] if values else default

    def getlist(self, key: str) -> list[str]:
        return dict.get(self, key) or []


def query_from(scope: Scope) -> Query:
    """Parse ``scope["query_string"]`` as Starlette does (``parse_qsl``, blank values
    kept), decoding only the parts that are encoded."""
    query = Query()
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return query
    for part in raw.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        values = dict.get(query, name)
        if values is None:
            query[name] = [value]
        else:
            values.append(value)
    return query


class ScopeHeaders:
    """``get`` on an ASGI scope's headers (lower-case names), without building them all."""

    __slots__ = ("raw",)

    def __init__(self, scope: Scope) -> None:
        self.raw: list[tuple[bytes, bytes]] = scope["headers"]

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.encode("latin-1")
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default
