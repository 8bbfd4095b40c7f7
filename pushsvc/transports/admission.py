"""Admission: what every transport, and the HTTP API, checks before anything flows.

Authenticate, validate the channel list, decode the cursor, check the connection limit
(``open_request``), a browser's ``Origin`` (``check_origin``) and the publish rate
(``limit_publish``). Each raises a ``PushError`` (an HTTP problem, or a WS close code)
before a byte of a stream is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pushsvc.auth import Authenticator, Principal, credential_from
from pushsvc.exceptions import BadRequest, Forbidden, Unavailable
from pushsvc.hub import Hub
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


async def open_request(
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
    principal = await auth.authenticate(credential_from(headers, query))
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
