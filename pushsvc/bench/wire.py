"""Raw, low-overhead clients for the load generator: one asyncio ``Protocol`` per
connection, no stream objects, no JSON parsing on the delivery path.

The generator must stay cheaper per delivery than the server it measures, so:

- WebSocket: a hand-written RFC 6455 client (handshake; frames encoded and decoded by
  :mod:`pushsvc.protocol.wsframes`, fragmented messages reassembled, pings answered);
  text frames that start with ``{"type":"event"`` are events.
- SSE and long-poll: HTTP/1.1 parsed by ``httptools`` (the C parser uvicorn uses),
  keep-alive for requests; SSE frames are split on blank lines.
- Event IDs (``"id":"<ms>-<seq>"``) are found with one compiled regex over each chunk.
  A ``Tally`` per subscriber counts them: strictly increasing IDs are new, anything else
  is a duplicate; publish->receive latency is the receive wall clock (one ``time.time()``
  per chunk) minus the ID's milliseconds.
- Peers (``Target.dialect``, see :mod:`pushsvc.bench.dialects`): the same clients speak a
  peer's subscription handshake (none, or Socket.IO over a raw WebSocket) and find
  ``@<ms>-<seq>@`` in the payload the generator published; their tally counts distinct
  sequence numbers (order-insensitive).
- Presence (``presence=True``, pushsvc only): the WebSocket ``subscribe`` frame carries
  ``"presence": true``, SSE and long-poll ask ``presence=1`` (a long-poll subscriber sends
  its own ``presence_id`` and echoes ``presence_version``). ``presence``, ``join`` and
  ``leave`` frames are counted apart (``Tally.presence``/``joins``/``leaves``) and never
  as events.
- Storms (``Tally.keep_cursor``): a subscriber keeps the newest cursor it received, as a
  real client does (a pushsvc WebSocket event's ``cursor``, an SSE frame's ``id:``, the
  ``id:`` line of a Nchan ``ws+meta.nchan`` message), and ``Subscriber.abort()`` drops its
  connection as a network blip does (``SO_LINGER`` 0: a reset, nothing flushed). Off
  elsewhere: the other scenarios pay no regex for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import socket
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any, cast
from urllib.parse import quote

import httptools  # type: ignore[import-untyped,unused-ignore]

from pushsvc.bench.dialects import PUSHSVC, Dialect
from pushsvc.protocol.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WS_1005_NO_STATUS_RCVD,
    FrameDecoder,
    encode_close,
    encode_frame,
)

ID_RE = re.compile(rb'"id":"(\d+)-(\d+)"')
CURSOR_RE = re.compile(rb'"cursor":"([^"]*)"')
SSE_ID_RE = re.compile(rb"(?m)^id: ?(.*)$")
WS_EVENT = b'{"type":"event"'
WS_SUBSCRIBED = b'{"type":"subscribed"'
WS_GAP = b'{"type":"gap"'
WS_PRESENCE = b'{"type":"presence"'
WS_JOIN = b'{"type":"join"'
WS_LEAVE = b'{"type":"leave"'
SSE_PRESENCE_EVENTS = (b"event: presence\n", b"event: join\n", b"event: leave\n")
POLL_PRESENCE_ITEMS = (b'{"type":"presence"', b'{"type":"join"', b'{"type":"leave"')
PRESENCE_VERSION_RE = re.compile(rb'"presence_version":"([^"]*)"')


class Tally:
    """What one subscriber received."""

    __slots__ = (
        "count",
        "cursor",
        "done",
        "dups",
        "firsts",
        "gaps",
        "joins",
        "keep_cursor",
        "last",
        "latencies",
        "leaves",
        "on_target",
        "presence",
        "reached_at",
        "seen",
        "subscribed",
        "target",
    )

    def __init__(
        self,
        target: int = 0,
        latencies: array[float] | None = None,
        ordered: bool = True,
        firsts: dict[Any, float] | None = None,
    ) -> None:
        self.count = 0  # distinct events (ordered: in order)
        self.dups = 0
        self.gaps = 0
        self.presence = 0  # presence snapshots received (not events)
        self.joins = 0  # join frames (not events)
        self.leaves = 0  # leave frames (not events)
        self.last: tuple[int, int] = (0, 0)
        self.target = target
        self.reached_at: float | None = None
        self.latencies = latencies
        # shared by the subscribers of a phase: each event's latency to the first of them
        # that received it (the generator reads its sockets in the order they are ready)
        self.firsts = firsts
        self.cursor: str | None = None
        self.keep_cursor = False  # storms: keep the newest cursor of every event
        self.subscribed = asyncio.Event()
        self.done = asyncio.Event()
        self.on_target: Callable[[Tally], None] | None = None
        # unordered (peers): the sequence numbers seen so far
        self.seen: set[int] | None = None if ordered else set()

    @property
    def presence_frames(self) -> int:
        return self.presence + self.joins + self.leaves

    def add(self, ids: list[tuple[bytes, bytes]]) -> None:
        if not ids:
            return
        now_ms = time.time() * 1000.0
        lat = self.latencies
        firsts = self.firsts
        seen = self.seen
        if seen is not None:
            for raw_ms, raw_seq in ids:
                seq = int(raw_seq)
                if seq in seen:
                    self.dups += 1
                    continue
                seen.add(seq)
                self.count += 1
                if lat is not None:
                    value = now_ms - int(raw_ms)
                    lat.append(value)
                    if firsts is not None and seq not in firsts:
                        firsts[seq] = value
        else:
            last = self.last
            for raw_ms, raw_seq in ids:
                ms = int(raw_ms)
                key = (ms, int(raw_seq))
                if key > last:
                    last = key
                    self.count += 1
                    if lat is not None:
                        lat.append(now_ms - ms)
                        if firsts is not None and key not in firsts:
                            firsts[key] = now_ms - ms
                else:
                    self.dups += 1
            self.last = last
        if self.target and self.reached_at is None and self.count >= self.target:
            self.reached_at = time.perf_counter()
            self.done.set()
            if self.on_target is not None:
                self.on_target(self)


@dataclass
class Target:
    host: str
    port: int
    token: str  # subscriber token
    api_key: str
    dialect: Dialect = PUSHSVC

    @property
    def host_header(self) -> bytes:
        return f"{self.host}:{self.port}".encode()

    @property
    def publish_target(self) -> Target:
        port = self.dialect.publish_port
        return self if port is None or port == self.port else dc_replace(self, port=port)


async def _connect(target: Target, factory: Callable[[], asyncio.Protocol]) -> Any:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(factory, target.host, target.port)
    return protocol


# --- WebSocket ---------------------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3)."""
    return encode_frame(opcode, payload, mask=os.urandom(4))


class WSClient(asyncio.Protocol):
    """A subscriber on ``/v1/ws`` (pushsvc) or on a peer's WebSocket endpoint (its
    ``Dialect``: ``raw`` or ``socketio``)."""

    def __init__(self, target: Target, tally: Tally, path: str | None = None) -> None:
        self.target = target
        self.tally = tally
        dialect = target.dialect
        self.path = path or dialect.path(dialect.ws_path, "")
        self.mode = dialect.ws_protocol
        self.id_re = dialect.id_re
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""  # the upgrade's answer, until complete
        self.decoder = FrameDecoder()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        key = base64.b64encode(os.urandom(16))
        auth = b""
        if self.mode == "pushsvc":
            auth = b"Authorization: Bearer " + self.target.token.encode() + b"\r\n"
        subprotocol = self.target.dialect.ws_subprotocol
        if subprotocol and self.tally.keep_cursor:  # a peer that sends IDs only when asked
            auth += b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n"
        self.transport.write(
            b"GET "
            + self.path.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.target.host_header
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n"
            + auth
            + b"\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"WebSocket closed before upgrade: {exc}"))
        self.closed.set()

    def subscribe(
        self, channels: list[str], cursor: str | None = None, presence: bool = False
    ) -> None:
        frame: dict[str, Any] = {"type": "subscribe", "channels": channels}
        if cursor is not None:
            frame["cursor"] = cursor
        if presence:
            frame["presence"] = True
        self.send_text(json.dumps(frame).encode())

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(OP_TEXT, payload))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(OP_CLOSE, encode_close(1000)))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            data = self._handshake(data)
            if not data:
                return
        ids: list[tuple[bytes, bytes]] = []
        decoder = self.decoder
        for opcode, payload in decoder.feed(data):
            if opcode in (OP_TEXT, OP_BINARY):
                self._message(payload, ids)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big")
                self.close_code = code if len(payload) >= 2 else WS_1005_NO_STATUS_RCVD
                self._drop()
            elif opcode == OP_PING and self.transport is not None:
                self.transport.write(ws_frame(OP_PONG, payload))
        if decoder.error is not None:
            self.close_code = decoder.error.code
            self._drop()
        if ids:
            self.tally.add(ids)

    def _handshake(self, data: bytes) -> bytes:
        """Read the upgrade's answer; answers the bytes after it (frames already)."""
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return b""
        self.buf = b""
        status = buf[:end].split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(status.decode("latin-1")))
            self._drop()
            return b""
        self.upgraded = True
        self.opened.set_result(None)
        return buf[end + 4 :]

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _message(self, payload: bytes, ids: list[tuple[bytes, bytes]]) -> None:
        """One text or binary message, by the dialect."""
        if self.mode == "pushsvc":
            nl = payload.find(b"\n")
            if nl < 0:
                self._pushsvc_frame(payload, 0, len(payload), ids)
                return
            start = 0  # batch framing: JSON frames separated by "\n"
            while nl >= 0:
                self._pushsvc_frame(payload, start, nl, ids)
                start = nl + 1
                nl = payload.find(b"\n", start)
            self._pushsvc_frame(payload, start, len(payload), ids)
        elif self.mode == "raw":
            if self.tally.keep_cursor and payload.startswith(b"id: "):  # ws+meta.nchan
                self.tally.cursor = payload[4 : payload.find(b"\n")].decode()
            ids += self.id_re.findall(payload)
        else:
            self._socketio_packet(payload, 0, len(payload), ids)

    def _pushsvc_frame(
        self, buf: bytes, start: int, end: int, ids: list[tuple[bytes, bytes]]
    ) -> None:
        if buf.startswith(WS_EVENT, start):
            m = self.id_re.search(buf, start, end)
            if m is not None:
                ids.append((m.group(1), m.group(2)))
            if self.tally.keep_cursor:
                c = CURSOR_RE.search(buf, start, end)
                if c is not None:
                    self.tally.cursor = c.group(1).decode()
        elif buf.startswith(WS_SUBSCRIBED, start):
            c = CURSOR_RE.search(buf, start, end)
            if c is not None:
                self.tally.cursor = c.group(1).decode()
            self.tally.subscribed.set()
        elif buf.startswith(WS_JOIN, start):
            self.tally.joins += 1
        elif buf.startswith(WS_LEAVE, start):
            self.tally.leaves += 1
        elif buf.startswith(WS_PRESENCE, start):
            self.tally.presence += 1
        elif buf.startswith(WS_GAP, start):
            self.tally.gaps += 1

    def _socketio_packet(
        self, buf: bytes, start: int, end: int, ids: list[tuple[bytes, bytes]]
    ) -> None:
        """Engine.IO v4 / Socket.IO v5 packets, one per WebSocket message."""
        if buf.startswith(b"42", start):  # a Socket.IO EVENT: 42["m","<payload>"]
            ids += self.id_re.findall(buf, start, end)
        elif end - start == 1 and buf[start] == 0x32:  # "2": ping
            self.send_text(b"3")
        elif buf.startswith(b"0{", start):  # Engine.IO open: connect to the namespace
            self.send_text(b"40")
        elif buf.startswith(b"40", start):  # Socket.IO CONNECT answered
            self.tally.subscribed.set()
        elif buf.startswith(b"44", start) or buf.startswith(b"1", start):
            self.close_code = 1008  # connect refused, or an Engine.IO close
            if self.transport is not None:
                self.transport.close()


# --- HTTP ----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)


class HTTPClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: sequential requests, or one endless stream
    whose body chunks go to ``on_chunk``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.headers_waiter: asyncio.Future[int] | None = None
        self.on_chunk: Callable[[bytes], None] | None = None
        self.body: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.lost = asyncio.Event()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}"))
        self.lost.set()

    def _fail(self, exc: Exception) -> None:
        for fut in (self.waiter, self.headers_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # an endless stream's waiter may never be awaited

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self.headers_waiter is not None and not self.headers_waiter.done():
            self.headers_waiter.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.on_chunk is not None:
            self.on_chunk(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(
                Response(self.parser.get_status_code(), b"".join(self.body), self.headers)
            )

    # requests
    def _send(self, method: bytes, path: str, headers: dict[str, str], body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: " + self.target.host_header]
        lines += [f"{k}: {v}".encode() for k, v in headers.items()]
        if body or method == b"POST":
            lines.append(b"Content-Length: " + str(len(body)).encode())
        self.body = []
        self.headers = {}
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Response:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.on_chunk = None
        self._send(method.encode(), path, headers, body)
        return await self.waiter

    async def stream(
        self, path: str, headers: dict[str, str], on_chunk: Callable[[bytes], None]
    ) -> int:
        """Start a GET whose body is endless; answers the status once headers arrive."""
        loop = asyncio.get_running_loop()
        self.headers_waiter = loop.create_future()
        self.waiter = loop.create_future()
        self.on_chunk = on_chunk
        self._send(b"GET", path, headers, b"")
        return await self.headers_waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def http_connect(target: Target) -> HTTPClient:
    client: HTTPClient = await _connect(target, lambda: HTTPClient(target))
    return client


def auth_header(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


# --- subscribers ---------------------------------------------------------------------------


class Subscriber:
    """One subscriber on one transport; ``start`` returns once it is subscribed."""

    transport_name = ""

    def __init__(
        self,
        target: Target,
        channel: str,
        tally: Tally,
        presence: bool = False,
        presence_id: str | None = None,
    ) -> None:
        self.target = target
        self.channel = channel
        self.tally = tally
        self.presence = presence  # subscribe with presence (pushsvc)
        # long-poll: the client's presence entry for all its polls (8-64 of [A-Za-z0-9_-])
        self.presence_id = presence_id or (os.urandom(9).hex() if presence else None)
        self.error: str | None = None  # why it stopped receiving early

    async def start(self, cursor: str | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection as a network blip does: a reset (``SO_LINGER`` 0), no close
        frame, nothing flushed."""
        client = getattr(self, "client", None)
        transport = getattr(client, "transport", None)
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


async def _subscribed_or_lost(subscribed: asyncio.Event, lost: asyncio.Event) -> None:
    ok = asyncio.ensure_future(subscribed.wait())
    gone = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({ok, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ok.cancel()
        gone.cancel()
    if not subscribed.is_set():
        raise ConnectionError("the connection closed before the subscription was confirmed")


class WSSubscriber(Subscriber):
    transport_name = "websocket"

    async def start(self, cursor: str | None = None) -> None:
        dialect = self.target.dialect
        path = dialect.path(dialect.ws_path, self.channel)
        if cursor is not None and dialect.ws_cursor_param is not None:  # a peer's resume
            path += f"&{dialect.ws_cursor_param}={quote(cursor, safe=':')}"
        self.client: WSClient = await _connect(
            self.target, lambda: WSClient(self.target, self.tally, path)
        )
        await self.client.opened
        if dialect.ws_protocol == "pushsvc":
            self.client.subscribe([self.channel], cursor, self.presence)
        elif dialect.ws_protocol == "raw":
            self.tally.subscribed.set()  # the upgrade is the subscription
        await _subscribed_or_lost(self.tally.subscribed, self.client.closed)

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


class SSESubscriber(Subscriber):
    transport_name = "sse"

    async def start(self, cursor: str | None = None) -> None:
        dialect = self.target.dialect
        self.pushsvc = dialect.sse_protocol == "pushsvc"
        self.id_re = dialect.id_re
        self.client = await http_connect(self.target)
        self.buf = b""
        headers = auth_header(self.target.token) if self.pushsvc else {}
        headers["Accept"] = "text/event-stream"
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
        path = dialect.path(dialect.sse_path, self.channel)
        if self.presence:
            path += "&presence=1"
        status = await self.client.stream(path, headers, self._chunk)
        if status != 200:
            raise ConnectionError(f"SSE answered {status}")
        if not self.pushsvc:
            self.tally.subscribed.set()  # the response headers are the subscription
        await _subscribed_or_lost(self.tally.subscribed, self.client.lost)

    def _chunk(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        block = buf[: end + 2]
        self.buf = buf[end + 2 :]
        tally = self.tally
        if not tally.subscribed.is_set():
            at = block.find(b"event: subscribed\n")
            if at >= 0:
                frame_end = block.find(b"\n\n", at)
                m = SSE_ID_RE.search(block, at, frame_end)
                if m is not None:
                    tally.cursor = m.group(1).decode()
                tally.subscribed.set()
        if tally.keep_cursor:
            last = block.rfind(b"\nid: ")
            if last >= 0 or block.startswith(b"id: "):
                m = SSE_ID_RE.search(block, last + 1)
                if m is not None:
                    tally.cursor = m.group(1).decode()
        if self.pushsvc and b"event: gap\n" in block:
            tally.gaps += block.count(b"event: gap\n")
        if self.presence and any(e in block for e in SSE_PRESENCE_EVENTS):
            block = self._presence_frames(block)
        ids = self.id_re.findall(block)
        if ids:
            tally.add(ids)

    def _presence_frames(self, block: bytes) -> bytes:
        """Count the block's presence/join/leave frames; answer the block without them."""
        kept: list[bytes] = []
        tally = self.tally
        for frame in block.split(b"\n\n"):
            if frame.startswith(b"event: presence\n"):
                tally.presence += 1
            elif frame.startswith(b"event: join\n"):
                tally.joins += 1
            elif frame.startswith(b"event: leave\n"):
                tally.leaves += 1
            else:
                kept.append(frame)
        return b"\n\n".join(kept)

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


class RetryableStatus(ConnectionError):
    def __init__(self, status: int, body: bytes, retry_after: float) -> None:
        super().__init__(f"answered {status}: {body[:200]!r}")
        self.status = status
        self.retry_after = retry_after


class PollSubscriber(Subscriber):
    """Polls in a loop with its cursor until ``stop()`` or its tally reaches its target.

    Like a real client it retries a poll refused with 429/503 (after ``Retry-After``,
    capped at 1 s, at most ``max_retries`` times in a row); ``refused`` counts them."""

    transport_name = "long-polling"
    wait = 20.0
    max_retries = 20

    async def start(self, cursor: str | None = None) -> None:
        self.client = await http_connect(self.target)
        self.stopped = False
        self.polls = 0
        self.refused: dict[str, int] = {}
        self.presence_version: str | None = None
        self.tally.cursor = cursor
        if cursor is None:
            await self.poll(timeout=0)  # seeds the cursor at the channel's top
        self.tally.subscribed.set()
        self.task = asyncio.create_task(self._loop())

    async def poll(self, timeout: float) -> None:
        path = f"/v1/poll?channel={quote(self.channel)}&timeout={timeout:g}"
        if self.tally.cursor:
            path += "&cursor=" + quote(self.tally.cursor)
        if self.presence:
            path += f"&presence=1&presence_id={self.presence_id}"
            if self.presence_version is not None:
                path += "&presence_version=" + quote(self.presence_version)
        r = await self.client.request("GET", path, auth_header(self.target.token))
        self.polls += 1
        if r.status in (429, 503):
            raw = r.headers.get(b"retry-after", b"1")
            retry_after = float(raw) if raw.isdigit() else 1.0
            raise RetryableStatus(r.status, r.body, retry_after)
        if r.status != 200:
            raise ConnectionError(f"poll answered {r.status}: {r.body[:200]!r}")
        body = r.body
        at = body.rfind(b'"cursor":"')
        if at >= 0:
            self.tally.cursor = body[at + 10 : body.find(b'"', at + 10)].decode()
        if b'"type":"gap"' in body:
            self.tally.gaps += body.count(b'"type":"gap"')
        if self.presence:
            v = PRESENCE_VERSION_RE.search(body, max(0, at))
            if v is not None:
                self.presence_version = v.group(1).decode()
            if any(item in body for item in POLL_PRESENCE_ITEMS):
                self._presence_items(body)
                return
        ids = ID_RE.findall(body)
        if ids:
            self.tally.add(ids)

    def _presence_items(self, body: bytes) -> None:
        """An answer with presence items (rare): parsed whole, events tallied apart."""
        tally = self.tally
        ids: list[tuple[bytes, bytes]] = []
        for item in json.loads(body)["events"]:
            kind = item.get("type")
            if kind == "presence":
                tally.presence += 1
            elif kind == "join":
                tally.joins += 1
            elif kind == "leave":
                tally.leaves += 1
            elif kind == "event":
                ms, _, seq = str(item["id"]).partition("-")
                ids.append((ms.encode(), seq.encode()))
        if ids:
            tally.add(ids)

    async def _loop(self) -> None:
        tally = self.tally
        retries = 0
        while not self.stopped and not (tally.target and tally.count >= tally.target):
            try:
                await self.poll(self.wait)
                retries = 0
            except RetryableStatus as exc:
                detail = str(exc)
                self.refused[detail] = self.refused.get(detail, 0) + 1
                retries += 1
                if retries > self.max_retries:
                    self.error = detail
                    return
                await asyncio.sleep(min(1.0, exc.retry_after) * random.random())
            except ConnectionError as exc:
                if not self.stopped:
                    self.error = str(exc)
                return

    def close(self) -> None:
        self.stopped = True
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


SUBSCRIBERS: dict[str, type[Subscriber]] = {
    "websocket": WSSubscriber,
    "sse": SSESubscriber,
    "long-polling": PollSubscriber,
}


# --- publisher -----------------------------------------------------------------------------


class Publisher:
    """``POST /v1/publish`` over one keep-alive connection with the API key; for a peer,
    ``POST`` the payload to its dialect's publish path (and port)."""

    def __init__(self, target: Target) -> None:
        self.dialect = target.dialect
        self.target = target.publish_target
        self.client: HTTPClient | None = None
        if self.dialect.is_pushsvc:
            self.headers = auth_header(target.api_key)
            self.headers["Content-Type"] = "application/json"
        else:
            self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        self.rejected = 0
        self.paths: dict[str, str] = {}

    async def open(self) -> Publisher:
        self.client = await http_connect(self.target)
        return self

    async def publish(self, body: bytes, channel: str = "") -> Response:
        if self.client is None or self.client.transport is None or self.client.lost.is_set():
            await self.open()
        assert self.client is not None
        path = self.paths.get(channel)
        if path is None:
            path = self.paths[channel] = self.dialect.path(self.dialect.publish_path, channel)
        r = await self.client.request("POST", path, self.headers, body)
        if r.status // 100 != 2:
            self.rejected += 1
        if r.headers.get(b"connection", b"").lower() == b"close":
            self.client.close()
            self.client = None
        return r

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
