"""The HTTP API besides the streams: publish, negotiate, history, presence, health."""

from __future__ import annotations

import asyncio
import json
import secrets as _secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pushsvc.auth import Principal, credential_from
from pushsvc.backends.base import Message, ReadResult
from pushsvc.exceptions import BackendError, BadRequest, PayloadTooLarge, PushError
from pushsvc.protocol import client_frames, frames
from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.events import Event, dump_json
from pushsvc.protocol.ids import StreamId, format_id, parse_id
from pushsvc.protocol.names import check_channel, check_channels
from pushsvc.settings import Settings
from pushsvc.transports.admission import limit_publish, positions_from
from pushsvc.transports.asgi import ClientGone, ScopeHeaders, answer_json, query_from, state

TRANSPORTS = ("websocket", "sse", "long-polling")


async def read_json(request: Request, limit: int, *, optional: bool = False) -> Any:
    """The request's JSON body (``None`` for an empty one when ``optional``)."""
    return parse_json(await read_body(request.receive, request.headers, limit), optional)


async def read_body(receive: Receive, headers: Any, limit: int) -> bytes:
    """A request's body, at most ``limit`` bytes (``PayloadTooLarge`` past it, as soon as
    its Content-Length says so). ``ClientGone`` when the client left before sending it."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes | bytearray = message.get("body", b"")
    if message.get("more_body", False):  # several chunks: the common case is one
        body = bytearray(body)
        while message.get("more_body", False):
            if len(body) > limit:
                break
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            body += message.get("body", b"")
    if len(body) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    return bytes(body)


def parse_json(body: bytes, optional: bool = False) -> Any:
    if optional and not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("body is not valid JSON") from exc


def _message(obj: Any, limits: client_frames.Limits) -> Message:
    """One message of a publish body: validated as the WebSocket validates a publish."""
    p = client_frames.parse_publish(obj, limits, key="idempotency_key")
    return Message(p.channel, p.event, p.data, p.binary, p.id)


def publish_messages(body: Any, settings: Settings) -> tuple[list[Message], bool]:
    """The messages of a publish body (one message, or ``{"messages": […]}``) and whether
    it is a batch: the validation and limits of ``POST /v1/publish``, which
    ``pushsvc.PushService`` shares."""
    limits = client_frames.limits_from(settings)
    batch = isinstance(body, dict) and "messages" in body
    if batch:
        raw = body["messages"]
        if not isinstance(raw, list) or not raw:
            raise BadRequest("messages must be a non-empty list")
        if len(raw) > settings.max_batch_messages:
            raise PayloadTooLarge(f"at most {settings.max_batch_messages} messages per batch")
        return [_message(m, limits) for m in raw], True
    return [_message(body, limits)], False


class PublishEndpoint:
    """``POST /v1/publish`` as a plain ASGI app. ``pushsvc.app`` calls it before the
    routing and middleware stack when no CORS middleware is configured (the route is
    the same app for the stack): a backend's publish is the request a push service
    answers most, and Starlette's request, response and exception layers cost more
    than the publish itself (benchmarks/results/request-path)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answer_json(_publish, scope, receive, send)


async def _publish(scope: Scope, receive: Receive) -> bytes:
    settings, hub, auth = state(scope)
    headers = ScopeHeaders(scope)
    principal = await auth.authenticate(credential_from(headers, query_from(scope)))
    limit = settings.max_publish_bytes * settings.max_batch_messages + 4096
    body = parse_json(await read_body(receive, headers, limit))
    messages, batch = publish_messages(body, settings)
    for m in messages:
        principal.check_publish(m.channel)
    limit_publish(scope, principal, len(messages))
    if not principal.is_api_key:
        # a user's idempotency keys live in the user's own namespace
        messages = [_scoped(m, principal) for m in messages]
    events = await hub.backend.append_many(messages)
    if batch:
        return b'{"results":[' + b",".join(_results(events)) + b"]}"
    return _results(events)[0]


def _results(events: list[Event]) -> list[bytes]:
    """``{"channel":…,"id":…}`` per event; a channel's JSON is encoded once per batch."""
    heads: dict[str, bytes] = {}
    out = []
    for event in events:
        head = heads.get(event.channel)
        if head is None:
            head = heads[event.channel] = b'{"channel":' + dump_json(event.channel) + b',"id":"'
        out.append(head + event.id_str.encode() + b'"}')
    return out


def _scoped(m: Message, principal: Principal) -> Message:
    if m.idempotency_key is None:
        return m
    return Message(
        m.channel, m.name, m.data, m.binary, f"u:{principal.subject}:{m.idempotency_key}"
    )


async def negotiate(request: Request) -> Response:
    """The client's first contact. With channels (JSON body ``{"channels", "cursor"?}`` or
    ``channel``/``cursor`` query parameters) it also pins where the client starts: the
    answer's ``cursor`` covers exactly those channels, each at its position in the given
    cursor or else at the channel's current top. A plain request/response gets through
    proxies that hold streams back, so a client that probes its transports afterwards
    resumes every attempt from there and loses nothing published meanwhile."""
    settings, hub, auth = state(request.scope)
    principal = await auth.authenticate(credential_from(request.headers, request.query_params))
    channels, given = await _negotiate_request(request, settings)
    body: dict[str, Any] = {
        "session_id": _secrets.token_urlsafe(12),
        "subject": principal.subject,
        "transports": list(TRANSPORTS),
        "endpoints": {
            "websocket": "/v1/ws",
            "sse": "/v1/sse",
            "long-polling": "/v1/poll",
            "publish": "/v1/publish",
        },
        "heartbeat_interval": settings.heartbeat_interval,
        "token_expires_at": principal.expires_at,
        "limits": {
            "max_channels_per_session": settings.max_channels_per_session,
            "max_publish_bytes": settings.max_publish_bytes,
            "max_frame_bytes": settings.max_frame_bytes,
            "max_batch_messages": settings.max_batch_messages,
            "poll_timeout_max": settings.poll_timeout_max,
            "outbound_queue_messages": settings.outbound_queue_messages,
        },
    }
    if channels:
        principal.check_subscribe(channels)
        positions = positions_from(given, channels)
        missing = [c for c, p in positions.items() if p is None]
        tops = await asyncio.gather(*(hub.backend.top(c) for c in missing))
        positions.update(zip(missing, tops, strict=True))
        body["channels"] = channels
        body["cursor"] = cursor_codec.encode({c: p for c, p in positions.items() if p is not None})
    return JSONResponse(body)


async def _negotiate_request(request: Request, settings: Any) -> tuple[list[str], str | None]:
    """The channels and cursor of a negotiate request: from a JSON body when there is one,
    else from the query string."""
    query = request.query_params
    raw_channels: Any = query.getlist("channel")
    given: Any = query.get("cursor") or None
    limit = cursor_codec.MAX_CURSOR_CHARS + settings.max_channels_per_session * (
        settings.max_channel_length * 6 + 8
    )
    payload = await read_json(request, limit, optional=True)
    if payload is not None:
        if not isinstance(payload, dict):
            raise BadRequest("negotiate body must be a JSON object")
        raw_channels = payload.get("channels", raw_channels)
        given = payload.get("cursor", given) or None
    if not isinstance(raw_channels, list):
        raise BadRequest("channels must be a list of channel names")
    if given is not None and not isinstance(given, str):
        raise BadRequest("cursor must be a string")
    if not raw_channels:
        if given is not None:
            raise BadRequest("a cursor needs the channels it positions")
        return [], None
    channels = check_channels(
        raw_channels, settings.max_channels_per_session, settings.max_channel_length
    )
    return channels, given


async def history(request: Request) -> Response:
    settings, hub, auth = state(request.scope)
    principal = await auth.authenticate(credential_from(request.headers, request.query_params))
    channel = check_channel(request.path_params["channel"], settings.max_channel_length)
    principal.check_subscribe([channel])
    query = request.query_params
    default_limit = str(min(100, settings.history_limit_max))
    after, limit = history_range(settings, query.get("after"), query.get("limit", default_limit))
    # other channels' positions to keep in the answered cursor (one cursor for several)
    kept = cursor_codec.decode(query["cursor"]) if query.get("cursor") else {}
    result = await hub.backend.read_after(channel, after, limit)
    items = []
    if result.gap is not None:
        items.append(frames.poll_gap(result.gap))
    items += [frames.poll_event(e) for e in result.events]
    last = history_next_after(after, result)
    kept[cursor_codec.channel_hash(channel)] = last
    cursor = cursor_codec.VERSION + "".join(cursor_codec.segment(h, p) for h, p in kept.items())
    body = (
        b'{"channel":'
        + dump_json(channel)
        + b',"events":['
        + b",".join(items)
        + b'],"top":"'
        + format_id(result.top).encode()
        + b'","next_after":"'
        + format_id(last).encode()
        + b'","cursor":"'
        + cursor.encode()
        + b'"}'
    )
    return Response(body, media_type="application/json")


def history_range(settings: Settings, after: str | None, limit: str) -> tuple[StreamId, int]:
    """The ``after`` position and ``limit`` of a history read, checked (shared with
    ``pushsvc.PushService``)."""
    position = parse_id(after) if after else (0, 0)
    if not limit.isdigit() or not 1 <= int(limit) <= settings.history_limit_max:
        raise BadRequest(f"limit must be an integer from 1 to {settings.history_limit_max}")
    return position, int(limit)


def history_next_after(after: StreamId, result: ReadResult) -> StreamId:
    """Where the next page of a history read starts."""
    last = (
        result.events[-1].id
        if result.events
        else max(after, result.gap.until if result.gap else after)
    )
    if not result.events and result.gap is None and after > result.top:
        last = result.top  # a position past the log (a reset memory backend): its top
    return last


def member_info(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}  # not written by pushsvc: shown empty rather than failing the snapshot


async def presence(request: Request) -> Response:
    """The channel's members, or only the counts (``truncated``) above
    ``presence_snapshot_max`` members."""
    settings, hub, auth = state(request.scope)
    principal = await auth.authenticate(credential_from(request.headers, request.query_params))
    channel = check_channel(request.path_params["channel"], settings.max_channel_length)
    principal.check_presence(channel)
    snap = await hub.backend.presence_snapshot(channel, settings.presence_snapshot_max)
    return JSONResponse(
        {
            "channel": channel,
            "members": [
                {"subject": subject, "info": member_info(info), "connections": connections}
                for subject, info, connections in snap.members
            ],
            "member_count": snap.member_count,
            "connection_count": snap.connection_count,
            "truncated": snap.truncated,
        }
    )


async def presence_stats(request: Request) -> Response:
    settings, hub, auth = state(request.scope)
    principal = await auth.authenticate(credential_from(request.headers, request.query_params))
    channel = check_channel(request.path_params["channel"], settings.max_channel_length)
    principal.check_presence(channel)
    members, connections = await hub.backend.presence_stats(channel)
    return JSONResponse(
        {"channel": channel, "member_count": members, "connection_count": connections}
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    _, hub, _ = state(request.scope)
    if hub.draining:  # a graceful shutdown began: a load balancer sends nothing more here
        return JSONResponse(
            {"status": "unavailable", "detail": "draining: the instance is shutting down"},
            status_code=503,
        )
    started = time.perf_counter()
    try:
        await hub.backend.ping()
    except PushError as exc:
        return JSONResponse(
            {"status": "unavailable", "backend": "down", "detail": exc.detail}, status_code=503
        )
    except Exception as exc:  # the readiness probe must answer, whatever the backend did
        err = BackendError(str(exc))
        return JSONResponse(
            {"status": "unavailable", "backend": "down", "detail": err.detail}, status_code=503
        )
    listener = hub.backend.listener_status()
    status = 200 if listener.connected else 503
    return JSONResponse(
        {
            "status": "ok" if listener.connected else "unavailable",
            "backend_rtt_ms": round((time.perf_counter() - started) * 1000, 3),
            "listener": {
                "connected": listener.connected,
                "reconnects": listener.reconnects,
                "channels": listener.channels,
            },
            "connections": len(hub.sessions),
        },
        status_code=status,
    )
