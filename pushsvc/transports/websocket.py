"""WebSocket: ``/v1/ws``, JSON frames (see ``pushsvc.protocol.client_frames`` and
``pushsvc.protocol.frames``).

Credentials are checked before the upgrade is accepted: a refused upgrade gets an HTTP
status with a problem body where the server supports ASGI's websocket denial response
(uvicorn does), else a close with the error's code before any event is sent.

A connection is one task, the reader; the hub writes the session's queue
(``pushsvc.writer``), frames being the hub's pre-encoded objects. A client
that connects with ``batch=1`` lets the server put several JSON frames, separated by
``\n``, into one text message when they are queued together (a backlog): one write
instead of one per event. Binary frames are never batched.

Requests that fail (a forbidden subscribe, a publish over the rate or over
max_publish_bytes) are answered with an ``error`` frame and the connection stays; frames
that cannot be understood close it with 4400 (1009 when over max_frame_bytes). Both are
rendered by ``pushsvc.problems``.

Compression: where the server negotiated pushsvc's permessage-deflate (it offers
``WRITE_FRAMES`` then, ``pushsvc.server``), ``DeflateWebSocketWriter`` writes whole
frames and, with ``ws_compression`` on, the session's wire is ``DeflateWebSocketWire``
(events compressed once, shared by the hub like plain frames); a compressed frame is one
message, never batched with others (plain ones around it still are). The setting
decides, not the negotiation alone: plain uvicorn negotiates deflate by default
(``--ws-per-message-deflate``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from pushsvc.auth import Authenticator, Principal, credential_from
from pushsvc.backends.base import Message
from pushsvc.exceptions import BadRequest, PayloadTooLarge, PushError, Unavailable
from pushsvc.metrics import TransportStats
from pushsvc.problems import deny_websocket, error_frame
from pushsvc.protocol import client_frames, codes
from pushsvc.protocol.asgi_extensions import WRITE_FRAMES, WRITE_TEXTS
from pushsvc.protocol.deflate import DeflatedFrame, deflate_wire
from pushsvc.protocol.frames import ws_control
from pushsvc.protocol.presence import client_conn_id
from pushsvc.protocol.wires import Frame, WebSocketWire
from pushsvc.protocol.wsframes import OP_TEXT, frame_header
from pushsvc.session import Session
from pushsvc.transports.admission import check_origin, limit_publish, positions_from
from pushsvc.transports.asgi import state
from pushsvc.writer import Writer

log = logging.getLogger("pushsvc.ws")


class WebSocketTransport:
    """A raw ASGI app (Starlette's WebSocket wrapper is skipped on the hot path)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_websocket(scope, receive, send)


async def serve_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    # This frame lives as long as the connection: the handshake's objects (headers,
    # query, the connect message) stay in ``_open``'s frame, which is gone by then.
    conn = await _open(scope, receive, send)
    if conn is None:
        return
    try:
        await conn.read(receive)
    finally:
        conn.release()


async def _open(scope: Scope, receive: Receive, send: Send) -> _Connection | None:
    settings, hub, auth = state(scope)
    headers = Headers(scope=scope)
    query = QueryParams(scope.get("query_string", b""))
    message = await receive()
    if message["type"] != "websocket.connect":
        return None
    try:
        check_origin(
            headers.get("origin"), headers.get("host"), settings.allowed_origins, scope=scope
        )
        principal = await auth.authenticate(credential_from(headers, query))
        if len(hub.sessions) >= settings.max_connections:
            raise Unavailable("connection limit reached on this instance", retry_after=2)
    except PushError as exc:
        hub.metrics.error(exc)
        await deny_websocket(scope, send, exc)
        return None
    await send({"type": "websocket.accept"})
    extensions = scope.get("extensions") or {}
    write_frames = extensions.get(WRITE_FRAMES)
    if write_frames is not None:  # the server negotiated permessage-deflate
        wire: WebSocketWire = WebSocketWire()
        if settings.ws_compression:  # else (plain uvicorn's default) frames go plain
            wire = deflate_wire(settings.ws_compression_level, settings.ws_compression_min_bytes)
        session = Session(hub, principal, wire)
        session.writer = DeflateWebSocketWriter(
            send, hub.metrics.websocket, query.get("batch") == "1", write_frames
        )
    else:
        session = Session(hub, principal, WebSocketWire())
        session.writer = WebSocketWriter(
            send, hub.metrics.websocket, query.get("batch") == "1", extensions.get(WRITE_TEXTS)
        )
    hub.register(session)
    return _Connection(session, auth, scope)


class WebSocketWriter(Writer):
    """Writes text frames through the server's synchronous ``pushsvc.write_texts``
    extension when it offers one (``pushsvc.server``): a backlog of several messages
    then goes out in one socket write even without ``batch=1``. Everything else (binary
    frames, the close, a socket pushing back) goes through ASGI ``send``."""

    __slots__ = ("batch", "write_texts")

    def __init__(
        self,
        send: Send,
        stats: TransportStats,
        batch: bool,
        write_texts: Callable[[list[bytes]], bool | None] | None = None,
    ) -> None:
        super().__init__(send, stats)
        self.batch = batch
        self.write_texts = write_texts

    def payloads(self, frames: list[Frame]) -> list[bytes]:
        """What ``write_texts`` takes for ``frames`` (none: a frame it cannot write)."""
        if not all(type(f) is str for f in frames):
            return []
        if len(frames) == 1:
            return [frames[0].encode()]  # type: ignore[union-attr]
        if self.batch:
            return ["\n".join(frames).encode()]  # type: ignore[arg-type]
        return [f.encode() for f in frames]  # type: ignore[union-attr]

    def flush(self, session: Session) -> None:
        write_texts = self.write_texts
        if write_texts is not None and not self.busy and not session.finished:
            frames = session.queue
            payloads: list[bytes] = []  # none: only ask whether the connection is open
            if frames and session.close_code is None:
                payloads = self.payloads(frames)
            written = write_texts(payloads)
            if written is None:
                # The server closed the connection itself (its protocol ping timed out):
                # ``send`` would raise; the read loop gets the disconnect and releases.
                session.drain()
                session.finished = True
                session.close()
                return
            if written and payloads:
                self.stats.wrote(session.drain())
                return
        super().flush(session)

    def message(self, frame: Frame) -> ASGIMessage:
        if type(frame) is str:
            return {"type": "websocket.send", "text": frame}
        return {"type": "websocket.send", "bytes": frame}

    def messages(self, session: Session, frames: list[Frame]) -> list[ASGIMessage]:
        out: list[ASGIMessage] = []
        if self.batch and len(frames) > 1:
            texts: list[str] = []  # consecutive text frames go out as one message
            for frame in frames:
                if type(frame) is str:
                    texts.append(frame)
                    continue
                if texts:
                    out.append({"type": "websocket.send", "text": "\n".join(texts)})
                    texts = []
                out.append(self.message(frame))
            if texts:
                out.append({"type": "websocket.send", "text": "\n".join(texts)})
        else:
            out += map(self.message, frames)
        if session.close_code is not None:
            out.append(
                {
                    "type": "websocket.close",
                    "code": session.close_code,
                    "reason": session.close_reason[:120],
                }
            )
        return out


class DeflateWebSocketWriter(WebSocketWriter):
    """``WebSocketWriter`` for a connection that negotiated permessage-deflate: writes
    whole frames through the server's ``write_frames`` (compressed ones as the wire made
    them, text frames framed here, uncompressed). Through ASGI ``send`` (a binary frame,
    the close, a socket pushing back) a compressed frame goes as its plain text, which
    the server then compresses itself."""

    __slots__ = ()

    def payloads(self, frames: list[Frame]) -> list[bytes]:
        out: list[bytes] = []
        texts: list[str] = []  # with batch=1: consecutive plain texts make one message
        for frame in frames:
            if type(frame) is str:
                if self.batch:
                    texts.append(frame)
                else:
                    out.append(_text_frame(frame))
            elif type(frame) is DeflatedFrame:
                if texts:
                    out.append(_text_frame("\n".join(texts)))
                    texts = []
                out.append(frame)
            else:
                return []  # a binary message: ``send`` writes it
        if texts:
            out.append(_text_frame("\n".join(texts)))
        return out

    def message(self, frame: Frame) -> ASGIMessage:
        if type(frame) is DeflatedFrame:
            frame = frame.plain
        return super().message(frame)

    def messages(self, session: Session, frames: list[Frame]) -> list[ASGIMessage]:
        plain = [f.plain if type(f) is DeflatedFrame else f for f in frames]
        return super().messages(session, plain)


def _text_frame(text: str) -> bytes:
    data = text.encode()
    return frame_header(OP_TEXT, len(data)) + data


class _Connection:
    """The reader's state. Kept small: one lives as long as each connection."""

    __slots__ = ("_catching_up", "auth", "limits", "max_frame", "scope", "session", "tasks")

    def __init__(self, session: Session, auth: Authenticator, scope: Scope) -> None:
        self.session = session
        self.auth = auth
        self.scope = scope
        self.limits = client_frames.limits_from(session.hub.settings)
        self.max_frame = session.hub.settings.max_frame_bytes
        # created on first use: most connections never replay history
        self.tasks: set[asyncio.Task[None]] | None = None
        self._catching_up: asyncio.Lock | None = None

    def release(self) -> None:
        for task in list(self.tasks or ()):
            task.cancel()
        self.session.release()

    async def read(self, receive: Receive) -> None:
        """Read client frames until the connection ends. After the session closed (an
        error, the server's shutdown) frames are ignored until the disconnect, which
        uvicorn reports once the close frame was written."""
        session = self.session
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                session.close()
                return
            if session.close_code is not None:
                continue
            try:
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
                if exc.request is not None:  # a request refused: the connection goes on
                    self._error(exc, **exc.request)
                    continue
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
                if frame.presence:
                    session.principal.check_presence_all(frame.channels)
                positions = positions_from(frame.cursor, frame.channels)
            except PushError as exc:
                if isinstance(exc, BadRequest) and exc.problem == "bad-cursor":
                    raise
                self._error(exc, op="subscribe", channels=frame.channels)
                return
            conn_id = None
            if frame.presence_id is not None:
                conn_id = client_conn_id(session.principal.subject, frame.presence_id)
            await self._subscribe(frame.channels, positions, frame.presence, conn_id)
        elif isinstance(frame, client_frames.Unsubscribe):
            session.unsubscribe(frame.channels)
            session.push(ws_control("unsubscribed", channels=frame.channels, cursor=session.cursor))
        elif isinstance(frame, client_frames.Publish):
            await self._publish(frame)
        elif isinstance(frame, client_frames.Ping):
            session.push(ws_control("pong", id=frame.id))
        elif isinstance(frame, client_frames.Refresh):
            try:
                principal = await self.auth.authenticate(frame.token, allow_api_key=False)
            except PushError as exc:
                self._error(exc, op="refresh")
                return
            if principal.subject != session.principal.subject:
                self._error(BadRequest("refresh token is for another subject"), op="refresh")
                return
            session.principal = principal
            session.push(ws_control("refreshed", expires_at=principal.expires_at))

    async def _subscribe(
        self,
        channels: list[str],
        positions: dict[str, Any],
        presence: bool = False,
        conn_id: str | None = None,
    ) -> None:
        """Join inline, so that the ``subscribed`` answer (and live delivery, and the
        presence snapshots) precede anything the client sends next; replay history in a
        task of its own, so that the connection keeps reading (pings, publishes) during
        a long catch-up."""
        try:
            new = await self.session.join(channels, positions)
            if presence:
                await self.session.join_presence(channels, conn_id)
        except PushError as exc:
            self._error(exc, op="subscribe", channels=channels)
            return
        except Exception:
            log.exception("subscribe failed")
            self.session.close(codes.WS_1011_INTERNAL_ERROR, "subscribe failed; resume")
            return
        if new:
            self._spawn(self._catch_up(new, positions))

    async def _catch_up(self, new: list[str], positions: dict[str, Any]) -> None:
        if self._catching_up is None:
            self._catching_up = asyncio.Lock()
        async with self._catching_up:
            try:
                await self.session.catch_up(new, positions)
            except PushError as exc:
                self._error(exc, op="subscribe", channels=new)
            except Exception:
                log.exception("catch-up failed")
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
        self.session.push(error_frame(exc, **fields))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.tasks is not None:
            self.tasks.discard(task)
            if not self.tasks:
                self.tasks = None  # an idle connection keeps no empty set
