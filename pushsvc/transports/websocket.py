"""WebSocket: ``/v1/ws``, JSON frames (see ``pushsvc.protocol.client_frames`` and
``pushsvc.protocol.frames``).

Credentials are checked before the upgrade is accepted: a refused upgrade gets an HTTP
status with a problem body where the server supports ASGI's websocket denial response
(uvicorn does), else a close with the error's code before any event is sent.

A connection is a reader task and a writer task. The writer pumps the session's queue;
frames are the hub's pre-encoded objects. Requests that fail (a forbidden subscribe, a
publish over the rate) are answered with an ``error`` frame and the connection stays;
frames that cannot be understood close it with 4400 (1009 when over the size limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from pushsvc.auth import Authenticator, Principal, credential_from
from pushsvc.backends.base import Message
from pushsvc.exceptions import BadRequest, PayloadTooLarge, PushError, Unavailable
from pushsvc.protocol import client_frames, codes
from pushsvc.protocol.frames import ws_control
from pushsvc.session import Session
from pushsvc.transports._common import check_origin, limit_publish, positions_from, state
from pushsvc.wires import WebSocketWire

log = logging.getLogger("pushsvc.ws")


class WebSocketTransport:
    """A raw ASGI app (Starlette's WebSocket wrapper is skipped on the hot path)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_websocket(scope, receive, send)


async def serve_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    settings, hub, auth = state(scope)
    headers = Headers(scope=scope)
    query = QueryParams(scope.get("query_string", b""))
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    try:
        check_origin(headers.get("origin"), headers.get("host"), settings.allowed_origins)
        principal = auth.verify(credential_from(headers, query))
        if len(hub.sessions) >= settings.max_connections:
            raise Unavailable("connection limit reached on this instance", retry_after=2)
    except PushError as exc:
        hub.metrics.error(exc)
        await _deny(scope, send, exc)
        return
    await send({"type": "websocket.accept"})
    session = Session(hub, principal, WebSocketWire())
    hub.register(session)
    conn = _Connection(session, send, settings.max_frame_bytes, auth, scope)
    reader = asyncio.create_task(conn.read(receive))
    try:
        await conn.write()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        for task in list(conn.tasks):
            task.cancel()
        session.release()


async def _deny(scope: Scope, send: Send, exc: PushError) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(exc.problem_body()).encode()
        headers = [(b"content-type", b"application/problem+json")]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send(
            {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": exc.close_code, "reason": exc.detail[:120]})


class _Connection:
    def __init__(
        self, session: Session, send: Send, max_frame: int, auth: Authenticator, scope: Scope
    ) -> None:
        self.session = session
        self.auth = auth
        self.scope = scope
        self.send = send
        self.max_frame = max_frame
        self.limits = client_frames.Limits(
            max_channels=session.hub.settings.max_channels_per_session,
            max_channel_length=session.hub.settings.max_channel_length,
            max_event_name_length=session.hub.settings.max_event_name_length,
            max_payload_bytes=session.hub.settings.max_publish_bytes,
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self._subscribing = asyncio.Lock()

    async def write(self) -> None:
        session = self.session
        send = self.send
        stats = session.hub.metrics.websocket
        try:
            while True:
                await session.wait()
                batch = session.drain()
                for frame in batch:
                    if type(frame) is str:
                        await send({"type": "websocket.send", "text": frame})
                    else:
                        await send({"type": "websocket.send", "bytes": frame})
                stats.wrote(batch)
                if session.close_code is not None:
                    if session.close_code != codes.WS_1000_NORMAL_CLOSURE or session.close_reason:
                        await send(
                            {
                                "type": "websocket.close",
                                "code": session.close_code,
                                "reason": session.close_reason[:120],
                            }
                        )
                    return
        except OSError:
            return  # the peer is gone

    async def read(self, receive: Receive) -> None:
        session = self.session
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    session.close()
                    return
                session.last_seen = time.monotonic()
                text, raw = message.get("text"), message.get("bytes")
                size = len(text) if text is not None else len(raw or b"")
                if size > self.max_frame:
                    raise PayloadTooLarge(f"frame over {self.max_frame} bytes")
                if text is not None:
                    frame = client_frames.parse_text(text, self.limits)
                else:
                    frame = client_frames.parse_binary(raw or b"", self.limits)
                await self.handle(frame)
        except PushError as exc:
            session.hub.metrics.error(exc)
            session.close(exc.close_code, exc.detail)
        except Exception:
            log.exception("WebSocket reader failed")
            session.close(codes.WS_1011_INTERNAL_ERROR, "internal error")

    async def handle(self, frame: client_frames.Frame) -> None:
        session = self.session
        if isinstance(frame, client_frames.Subscribe):
            try:
                session.principal.check_subscribe(frame.channels)
                positions = positions_from(frame.cursor, frame.channels)
            except PushError as exc:
                if isinstance(exc, BadRequest) and exc.problem == "bad-cursor":
                    raise
                self._error(exc, op="subscribe", channels=frame.channels)
                return
            self._spawn(self._subscribe(frame.channels, positions))
        elif isinstance(frame, client_frames.Unsubscribe):
            session.unsubscribe(frame.channels)
            session.push(ws_control("unsubscribed", channels=frame.channels, cursor=session.cursor))
        elif isinstance(frame, client_frames.Publish):
            await self._publish(frame)
        elif isinstance(frame, client_frames.Ping):
            session.push(ws_control("pong", id=frame.id))
        elif isinstance(frame, client_frames.Refresh):
            try:
                principal = self.auth.verify(frame.token, allow_api_key=False)
            except PushError as exc:
                self._error(exc, op="refresh")
                return
            if principal.subject != session.principal.subject:
                self._error(BadRequest("refresh token is for another subject"), op="refresh")
                return
            session.principal = principal
            session.push(ws_control("refreshed", expires_at=principal.expires_at))

    async def _subscribe(self, channels: list[str], positions: dict[str, Any]) -> None:
        async with self._subscribing:
            try:
                await self.session.subscribe(channels, positions)
            except PushError as exc:
                self._error(exc, op="subscribe", channels=channels)
            except Exception:
                log.exception("subscribe failed")
                self.session.close(codes.WS_1011_INTERNAL_ERROR, "subscribe failed; resume")

    async def _publish(self, frame: client_frames.Publish) -> None:
        principal: Principal = self.session.principal
        try:
            principal.check_publish(frame.channel)
            limit_publish(self.scope, principal)
            event = await self.session.hub.backend.append(
                Message(
                    frame.channel,
                    frame.event,
                    frame.data,
                    frame.binary,
                    idempotency_key=f"u:{principal.subject}:{frame.id}",
                )
            )
        except PushError as exc:
            self._error(exc, op="publish", id=frame.id)
            return
        self.session.push(
            ws_control("ack", id=frame.id, channel=frame.channel, event_id=event.id_str)
        )

    def _error(self, exc: PushError, **fields: Any) -> None:
        self.session.hub.metrics.error(exc)
        body = exc.problem_body()
        self.session.push(
            ws_control(
                "error",
                code=exc.close_code,
                status=exc.status,
                detail=exc.detail,
                **fields,
                problem=body["type"],
            )
        )

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
