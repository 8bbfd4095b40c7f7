"""What every transport does before anything flows: authenticate, validate the channel
list, decode the cursor, and check the connection limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pushsvc.auth import Authenticator, Principal, credential_from
from pushsvc.exceptions import BadRequest, Forbidden, PushError, Unavailable
from pushsvc.hub import Hub
from pushsvc.problems import push_error_handler, unexpected_error_handler
from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.names import check_channels
from pushsvc.protocol.presence import check_presence_id, client_conn_id
from pushsvc.settings import Settings


@dataclass(slots=True)
class Opening:
    principal: Principal
    channels: list[str]
    positions: dict[str, StreamId | None]
    presence: bool = False  # ?presence=1: join the channels' presence and receive it
    presence_conn: str | None = None  # from ?presence_id=: the client's own entry


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


def state(scope: Any) -> tuple[Settings, Hub, Authenticator]:
    st = scope["app"].state
    return st.settings, st.hub, st.auth


def open_request(
    settings: Settings,
    hub: Hub,
    auth: Authenticator,
    headers: Any,
    query: Any,
    cursor: str | None,
    *,
    count_connection: bool = True,
) -> Opening:
    """Authorize a subscription request. Raises a ``PushError`` before any byte flows."""
    principal = auth.verify(credential_from(headers, query))
    channels = check_channels(
        query.getlist("channel"), settings.max_channels_per_session, settings.max_channel_length
    )
    principal.check_subscribe(channels)
    presence = _flag(query.get("presence"), "presence")
    presence_conn = None
    if presence:
        principal.check_presence_all(channels)
        presence_id = query.get("presence_id")
        if presence_id is not None:
            presence_conn = client_conn_id(principal.subject, check_presence_id(presence_id))
    positions = positions_from(cursor, channels)
    if count_connection and len(hub.sessions) >= settings.max_connections:
        raise Unavailable("connection limit reached on this instance", retry_after=2)
    return Opening(principal, channels, positions, presence, presence_conn)


def _flag(raw: str | None, name: str) -> bool:
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise BadRequest(f"{name} must be 1 or 0")


def limit_publish(scope: Any, principal: Principal, count: int = 1) -> None:
    """Spend ``count`` publishes of the principal's per-instance rate (or raise 429)."""
    st = scope["app"].state
    limiter = st.api_key_limiter if principal.is_api_key else st.publish_limiter
    limiter.take(principal.subject, count)


def check_origin(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> None:
    """Cross-site WebSocket hijacking: a browser's Origin must be allowed. Non-browser
    clients send no Origin; same-origin pages are always allowed."""
    if origin is None or "*" in allowed or origin in allowed:
        return
    if host is not None and urlsplit(origin).netloc == host:
        return
    raise Forbidden("origin not allowed", origin=origin[:200])


def positions_from(cursor: str | None, channels: list[str]) -> dict[str, StreamId | None]:
    """Positions on the requested (already authorized) channels only: a cursor never adds
    a channel by itself."""
    if cursor is not None and len(cursor) > cursor_codec.MAX_CURSOR_CHARS:
        raise BadRequest("cursor too long")
    return cursor_codec.positions_for(cursor or None, channels)
