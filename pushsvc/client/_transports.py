"""The three client transports, each a ``Connection`` with one shape:

- ``open()`` returns once the transport works on this network path (WS: the
  ``subscribed`` frame arrived; SSE: the first byte; long-poll: a first answer) or raises
  ``Blocked`` (try the next transport) or ``Transient`` (back off, retry);
- ``run()`` pumps frames into the sink until the connection fails (always raises);
- ``send(msg)`` publishes one outbox message (WS frame, else ``POST /v1/publish``).

Failure classification: a WebSocket upgrade answered by a plain HTTP status (a proxy that
strips ``Upgrade`` makes the server answer 404) or by garbage, and an SSE stream whose
first byte does not arrive within the window (the server writes a comment at once, so
silence means a buffering proxy), are ``Blocked``; refused connections, 5xx, 429 and 401
(the token is checked again by the next negotiate) are ``Transient``.

An outage is not a proxy: a frozen or overloaded server also withholds SSE's first byte
and a WebSocket handshake. So when one times out, the client asks ``POST /v1/negotiate``
(``server_answers``) while it keeps waiting: no answer is an outage (``Transient``: back
off, retry the same transport). An answer that took ``d`` seconds gives the stream
``0.1 + 2d`` seconds more (a server that was frozen answers both at once when it wakes
up); only a stream still silent then is ``Blocked``.

Presence (``Context.presence``): every subscription carries the flag (WebSocket
``"presence": true``, SSE and long-poll ``presence=1``, each with the client's
``presence_id``, so that all its connections are one presence entry; long-poll also the
last ``presence_version`` answered to this connection, none on its first poll so that it
gets a snapshot at once). The server's ``presence``/``join``/``leave``
frames go to ``sink.presence`` as objects with a ``"type"``, those received together (a
WebSocket message, an SSE chunk, a long-poll answer) in one call; the client decides
what they mean (``_presence``).

Liveness: every byte received counts; a connection silent for ``dead_after`` (a multiple
of the server's heartbeat interval) is dead. The timer is paused while the sink applies
backpressure, so a slow application is not mistaken for a dead server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from pushsvc.client._errors import Blocked, PublishRejected, ServerRejected, Transient
from pushsvc.client._outbox import Outgoing
from pushsvc.client._presence import PRESENCE_FRAMES
from pushsvc.client._sse import SSEMessage, SSEParser
from pushsvc.protocol.codes import Policy, close_policy, reconnect_at_once


class Sink(Protocol):
    def event(self, channel: str, name: str, event_id: str, data: Any) -> None: ...
    def gap(self, channel: str, after: str, until: str) -> None: ...
    def presence(self, frames: list[dict[str, Any]]) -> None: ...
    def seed(self, cursor: str | None) -> None: ...
    def acked(self, msg_id: str, event_id: str) -> None: ...
    def rejected(self, msg_id: str, exc: BaseException) -> None: ...
    def retry_later(self, msg_id: str) -> None: ...
    def resume_cursor(self) -> str | None: ...
    async def room(self) -> None: ...


@dataclass(slots=True)
class Context:
    """What every connection of one client shares."""

    base_url: str
    channels: list[str]
    http: httpx.AsyncClient  # negotiate and publish (keep-alive)
    streams: httpx.AsyncClient  # SSE and long-poll: a fresh connection each time
    token: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)
    heartbeat_interval: float = 15.0
    heartbeat_grace: float = 2.5
    connect_timeout: float = 10.0
    sse_first_byte_timeout: float = 3.0
    poll_timeout: float = 20.0
    max_frame_bytes: int = 1 << 20
    presence: bool = False  # subscribe with the presence flag
    presence_id: str = ""  # this client's presence entry, on every transport

    @property
    def dead_after(self) -> float:
        return self.heartbeat_interval * self.heartbeat_grace

    def url(self, name: str, default: str) -> str:
        return self.base_url + self.endpoints.get(name, default)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def classify_status(status: int, detail: str, what: str) -> Exception:
    if status in (400, 403):
        return ServerRejected(status, detail)
    if status in (401, 408, 429) or status >= 500:
        return Transient(f"{what}: HTTP {status} {detail}", reauth=status == 401)
    return Blocked(f"{what}: HTTP {status}")


def classify_close(code: int, reason: str) -> Exception:
    """The server's close as the table (``pushsvc.protocol.codes``) says: ``stop`` ends
    the client; ``reauth`` reconnects through a negotiate with a token from the token
    source, which ends the client when it is refused (a fixed, stale token); ``resume``
    (and any code not in the table) reconnects, at once after a drain's code (1012)."""
    policy = close_policy(code)
    if policy is Policy.STOP:
        return ServerRejected(code, reason)
    return Transient(
        f"closed with {code} {reason}".strip(),
        reauth=policy is Policy.REAUTH,
        at_once=reconnect_at_once(code),
        code=code,
    )


async def server_answers(ctx: Context) -> float | None:
    """Seconds the server took to answer ``POST /v1/negotiate`` (any status below 500:
    a proxy's 502/504 means the server behind it is down), or ``None`` when it did not
    answer within ``connect_timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        r = await ctx.http.post(
            ctx.base_url + "/v1/negotiate", headers=ctx.auth, timeout=ctx.connect_timeout
        )
    except httpx.TransportError:
        return None
    return loop.time() - started if r.status_code < 500 else None


async def first_or_outage(
    ctx: Context, attempt: asyncio.Task[Any], window: float, what: str
) -> Any:
    """The result of ``attempt`` (opening a transport), which did not finish within its
    ``window``: wait on while the server is asked whether it answers at all. Raises
    ``Transient`` for an outage, ``Blocked`` when the server answers and ``attempt``
    still does not finish soon after."""
    check = asyncio.create_task(server_answers(ctx))
    try:
        await asyncio.wait({attempt, check}, return_when=asyncio.FIRST_COMPLETED)
        if attempt.done():
            return attempt.result()
        latency = check.result()
        if latency is None:
            raise Transient(
                f"{what}: no answer within {window:g} s, and the server does not answer"
            )
        done, _ = await asyncio.wait({attempt}, timeout=0.1 + 2 * latency)
        if attempt in done:
            return attempt.result()
        raise Blocked(f"{what}: nothing within {window:g} s while the server answers")
    finally:
        check.cancel()
        with contextlib.suppress(BaseException):
            await check


def _detail(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(obj, dict):
        return str(obj.get("detail") or obj.get("title") or obj)[:200]
    return str(obj)[:200]


def _payload(obj: dict[str, Any]) -> Any:
    if obj.get("encoding") == "base64":
        try:
            return base64.b64decode(obj.get("data") or "")
        except (binascii.Error, ValueError) as exc:
            raise Transient("undecodable base64 payload") from exc
    return obj.get("data")


class Connection:
    transport: ClassVar[str]

    def __init__(self, ctx: Context, sink: Sink) -> None:
        self.ctx = ctx
        self.sink = sink
        self.presence_frames: list[dict[str, Any]] = []  # received together, not handed over

    def flush_presence(self) -> None:
        if self.presence_frames:
            frames, self.presence_frames = self.presence_frames, []
            self.sink.presence(frames)

    async def open(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def send(self, msg: Outgoing) -> None:
        await http_publish(self.ctx, self.sink, msg)

    async def close(self) -> None:
        return None

    def item(self, obj: dict[str, Any], data: Any) -> None:
        if obj.get("type", "event") == "gap":
            self.sink.gap(str(obj["channel"]), str(obj["after"]), str(obj["until"]))
        else:
            self.sink.event(str(obj["channel"]), str(obj["event"]), str(obj["id"]), data)


async def http_publish(ctx: Context, sink: Sink, msg: Outgoing) -> None:
    """``POST /v1/publish`` with the user's token: SSE and long-poll clients publish so."""
    try:
        r = await ctx.http.post(
            ctx.url("publish", "/v1/publish"),
            content=msg.http_body(),
            headers={**ctx.auth, "Content-Type": "application/json"},
            timeout=ctx.connect_timeout,
        )
    except httpx.TransportError as exc:
        raise Transient(f"publish: {exc!r}") from exc
    if r.status_code == 200:
        sink.acked(msg.id, str(r.json()["id"]))
        return
    err = classify_status(r.status_code, _detail(r.content), "publish")
    if isinstance(err, Transient):
        raise err
    sink.rejected(msg.id, PublishRejected(r.status_code, _detail(r.content)))


class WebSocketConnection(Connection):
    transport = "websocket"

    def __init__(self, ctx: Context, sink: Sink) -> None:
        super().__init__(ctx, sink)
        self.ws: ClientConnection | None = None
        self.silent = False

    def _ws_url(self) -> str:
        url = self.ctx.url("websocket", "/v1/ws")
        url = "ws" + url.removeprefix("http") if url.startswith("http") else url
        # batch=1: the server may put several frames into one text message (_message)
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "batch"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("batch", "1")])))

    async def open(self) -> None:
        ctx = self.ctx
        handshake = asyncio.create_task(self._handshake())
        try:
            done, _ = await asyncio.wait({handshake}, timeout=ctx.connect_timeout)
            if handshake in done:
                self.ws = handshake.result()
            else:  # a proxy that holds the handshake, or a server that does not answer
                self.ws = await first_or_outage(
                    ctx, handshake, ctx.connect_timeout, "WebSocket handshake"
                )
        finally:
            if not handshake.done():
                handshake.cancel()
                with contextlib.suppress(BaseException):
                    await handshake
        ws = self.ws
        subscribe: dict[str, Any] = {"type": "subscribe", "channels": ctx.channels}
        cursor = self.sink.resume_cursor()
        if cursor:
            subscribe["cursor"] = cursor
        if ctx.presence:
            # one presence entry for this client on every transport (a move up from
            # long-polling takes over the polls' entry instead of adding one)
            subscribe["presence"] = True
            subscribe["presence_id"] = ctx.presence_id
        try:
            await ws.send(json.dumps(subscribe))
            async with asyncio.timeout(ctx.connect_timeout):
                while True:
                    if "subscribed" in await self._message(await ws.recv()):
                        return
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc
        except TimeoutError as exc:
            raise Transient("WebSocket: no answer to subscribe") from exc

    async def _handshake(self) -> ClientConnection:
        ctx = self.ctx
        try:
            return await connect(
                self._ws_url(),
                additional_headers=ctx.auth,
                open_timeout=None,  # timed by open()
                ping_interval=None,  # the server's app-level heartbeats tell liveness
                compression=None,  # the server does not deflate (memory per connection)
                max_size=max(ctx.max_frame_bytes * 2, 1 << 20),
                close_timeout=1,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (429, 401) or status >= 500:
                raise Transient(f"WebSocket upgrade: HTTP {status}", reauth=status == 401) from exc
            raise Blocked(f"WebSocket upgrade answered with HTTP {status}") from exc
        except InvalidHandshake as exc:
            raise Blocked(f"WebSocket handshake failed: {exc}") from exc
        except OSError as exc:
            raise Transient(f"WebSocket connect: {exc!r}") from exc

    async def run(self) -> None:
        ws = self.ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        dead_after = self.ctx.dead_after
        try:
            async with asyncio.timeout(dead_after) as timer:
                while True:
                    message = await ws.recv()
                    timer.reschedule(None)
                    await self._message(message)
                    timer.reschedule(loop.time() + dead_after)
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc
        except TimeoutError as exc:
            self.silent = True
            raise Transient(f"WebSocket silent for {dead_after:g} s", silent=True) from exc

    async def _message(self, message: str | bytes) -> list[str]:
        """Handle the frames of one message in order; answer their types. With ``batch=1``
        a text message holds one or more JSON frames separated by ``"\\n"`` (JSON text has
        no raw newline); a binary message is one frame and is never batched."""
        if isinstance(message, bytes):
            return [await self._handle(message)]
        try:
            return [await self._handle(part) for part in message.split("\n") if part]
        finally:
            self.flush_presence()

    async def _handle(self, frame: str | bytes) -> str:
        if isinstance(frame, bytes):
            head, _, payload = frame.partition(b"\n")
            obj = json.loads(head)
            self.item(obj, payload)
            await self.sink.room()
            return "event"
        obj = json.loads(frame)
        kind = str(obj.get("type"))
        if kind == "event":
            self.item(obj, _payload(obj))
            await self.sink.room()
        elif kind == "gap":
            self.item(obj, None)
        elif kind in PRESENCE_FRAMES:
            self.presence_frames.append(obj)
        elif kind == "subscribed":
            self.sink.seed(obj.get("cursor"))
        elif kind == "ack":
            self.sink.acked(str(obj["id"]), str(obj["event_id"]))
        elif kind == "error":
            self._error(obj)
        return kind

    def _error(self, obj: dict[str, Any]) -> None:
        status = int(obj.get("status") or 0)
        detail = str(obj.get("detail", ""))
        if obj.get("op") == "publish" and "id" in obj:
            if status == 429 or status >= 500:
                self.sink.retry_later(str(obj["id"]))
            else:
                self.sink.rejected(str(obj["id"]), PublishRejected(status, detail))
        elif obj.get("op") == "subscribe":
            raise classify_status(status, detail, "subscribe")

    def _closed(self, exc: ConnectionClosed) -> Exception:
        if exc.rcvd is None:
            return Transient("WebSocket connection lost")
        return classify_close(exc.rcvd.code, exc.rcvd.reason)

    async def send(self, msg: Outgoing) -> None:
        assert self.ws is not None
        try:
            await self.ws.send(msg.ws_frame())
        except ConnectionClosed as exc:
            raise Transient("WebSocket closed while publishing") from exc

    async def close(self) -> None:
        if self.ws is None:
            return
        if self.silent:  # no closing handshake with a peer that does not answer
            self.ws.transport.abort()
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 1.0)


class SSEConnection(Connection):
    transport = "sse"

    def __init__(self, ctx: Context, sink: Sink) -> None:
        super().__init__(ctx, sink)
        self.response: httpx.Response | None = None
        self.chunks: AsyncIterator[bytes] | None = None
        self.parser = SSEParser()

    async def open(self) -> None:
        ctx = self.ctx
        headers = {**ctx.auth, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        cursor = self.sink.resume_cursor()
        if cursor:
            headers["Last-Event-ID"] = cursor
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("channel", c) for c in ctx.channels
        ]
        if ctx.presence:
            params += [("presence", "1"), ("presence_id", ctx.presence_id)]
        request = ctx.streams.build_request(
            "GET",
            ctx.url("sse", "/v1/sse"),
            params=params,
            headers=headers,
            timeout=httpx.Timeout(ctx.connect_timeout, read=None),
        )
        window = ctx.sse_first_byte_timeout
        attempt = asyncio.create_task(self._first_byte(request))
        try:
            done, _ = await asyncio.wait({attempt}, timeout=window)
            if attempt in done:
                first = attempt.result()
            else:  # a buffering proxy, or a server that does not answer at all
                first = await first_or_outage(ctx, attempt, window, "SSE first byte")
        finally:
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
        await self._feed(first)

    async def _first_byte(self, request: httpx.Request) -> bytes:
        try:
            self.response = response = await self.ctx.streams.send(request, stream=True)
            if response.status_code != 200:
                body = await response.aread()
                raise classify_status(response.status_code, _detail(body), "SSE")
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise Blocked("SSE answered with " + response.headers.get("content-type", "?"))
            self.chunks = response.aiter_bytes()
            return await anext(self.chunks)
        except StopAsyncIteration as exc:
            raise Transient("SSE stream ended at once") from exc
        except httpx.TransportError as exc:
            raise Transient(f"SSE: {exc!r}") from exc

    async def run(self) -> None:
        assert self.chunks is not None
        loop = asyncio.get_running_loop()
        dead_after = self.ctx.dead_after
        try:
            async with asyncio.timeout(dead_after) as timer:
                async for chunk in self.chunks:
                    timer.reschedule(None)
                    await self._feed(chunk)
                    timer.reschedule(loop.time() + dead_after)
        except TimeoutError as exc:
            raise Transient(f"SSE silent for {dead_after:g} s", silent=True) from exc
        except httpx.HTTPError as exc:
            raise Transient(f"SSE: {exc!r}") from exc
        raise Transient("SSE stream ended")

    async def _feed(self, chunk: bytes) -> None:
        try:
            for message in self.parser.feed(chunk):
                await self._message(message)
        finally:
            self.flush_presence()

    async def _message(self, message: SSEMessage) -> None:
        if message.event in ("message", "gap"):
            obj = json.loads(message.data)
            if message.event == "gap":
                obj["type"] = "gap"
            self.item(obj, _payload(obj))
            await self.sink.room()
        elif message.event in PRESENCE_FRAMES:
            obj = json.loads(message.data)
            obj["type"] = message.event
            self.presence_frames.append(obj)
        elif message.event == "subscribed":
            self.sink.seed(message.id)
        elif message.event == "close":
            obj = json.loads(message.data)
            raise classify_close(int(obj.get("code", 1000)), str(obj.get("reason", "")))

    async def close(self) -> None:
        if self.response is not None:
            with contextlib.suppress(Exception):
                await self.response.aclose()


class PollConnection(Connection):
    transport = "long-polling"

    def __init__(self, ctx: Context, sink: Sink) -> None:
        super().__init__(ctx, sink)
        self.presence_version: str | None = None  # the last answer's

    async def open(self) -> None:
        await self._poll(0.0)

    async def run(self) -> None:
        while True:
            await self._poll(self.ctx.poll_timeout)

    async def _poll(self, timeout: float) -> None:
        ctx = self.ctx
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("channel", c) for c in ctx.channels
        ]
        params.append(("timeout", f"{timeout:g}"))
        cursor = self.sink.resume_cursor()
        if cursor:
            params.append(("cursor", cursor))
        if ctx.presence:
            params += [("presence", "1"), ("presence_id", ctx.presence_id)]
            if self.presence_version is not None:
                params.append(("presence_version", self.presence_version))
        try:
            r = await ctx.streams.get(
                ctx.url("long-polling", "/v1/poll"),
                params=params,
                headers=ctx.auth,
                timeout=httpx.Timeout(ctx.connect_timeout, read=timeout + ctx.dead_after),
            )
        except httpx.TimeoutException as exc:
            raise Transient(f"long-poll: {exc!r}", silent=True) from exc
        except httpx.TransportError as exc:
            raise Transient(f"long-poll: {exc!r}") from exc
        if r.status_code != 200:
            raise classify_status(r.status_code, _detail(r.content), "long-poll")
        try:
            body = r.json()
            items = body["events"]
            next_cursor = body["cursor"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Blocked("long-poll answered with something else than a batch") from exc
        for obj in items:
            if obj.get("type") in PRESENCE_FRAMES:
                self.presence_frames.append(obj)
            else:
                self.item(obj, _payload(obj))
        self.flush_presence()
        if body.get("presence_version") is not None:
            self.presence_version = str(body["presence_version"])
        self.sink.seed(next_cursor)
        await self.sink.room()


CONNECTIONS: dict[str, type[Connection]] = {
    c.transport: c for c in (WebSocketConnection, SSEConnection, PollConnection)
}
