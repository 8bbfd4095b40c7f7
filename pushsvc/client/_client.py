"""``Client``: one logical subscription that survives its transports.

Choices worth knowing:

- **Dedup by (channel, ID).** The client keeps the last accepted ID per channel (IDs are
  ``"ms-seq"``, compared as int tuples) and drops anything not newer. Each connection
  delivers a channel in order without holes from its resume point, so the merge of two
  connections (during a transport switch) through this filter is still complete, in
  order, and free of duplicates.
- **The cursor is computed here**, from those positions, with the server's own codec:
  every yielded ``Event`` carries the cursor right after it on every transport (a
  long-poll answer has one cursor for a whole batch).
- **The start is pinned at the first contact.** A channel without a position (no
  ``cursor=`` given) gets one from the first ``POST /v1/negotiate``, which answers a
  cursor at the channels' current tops, before any transport is tried: a plain
  request/response that buffering proxies pass intact. Every transport attempt and
  every reconnect then resumes from there or later, so nothing published while the
  client probes its transports (an SSE stream held back for ``sse_first_byte_timeout``
  by a gzip-buffering proxy) is lost. ``await client.ready()`` answers once every
  channel is pinned. (A server that answers no cursor: the ``subscribed``/poll cursor.)
- **An outage is not a proxy**: a transport that times out opening (no SSE byte within
  the window, a WebSocket handshake) is demoted only if the server answers a
  ``negotiate`` meanwhile (``server_answers`` in ``_transports``); otherwise the server is
  down or frozen, and the client backs off and retries the same transport (as
  ``pushsvc.js`` does).
- **Moving up** (re-probe): while on a fallback, a better transport is opened *beside*
  the current one, resuming from the current cursor; once it works the old one is closed.
  There is no moment without a connection, and the dedup absorbs the overlap.
- **Presence** (``presence=True``): every subscription asks for it, and the connections
  hand the server's presence frames to ``PresenceViews`` (``_presence``), told which
  connection is in use when ``_serve`` adopts one: the views follow that connection only,
  so the overlap of a move-up or a reconnect neither doubles nor loses a member. Presence
  frames are not items: ``on_presence`` reports members appearing and disappearing.
- **Backpressure**: items wait in a bounded buffer; when it is full the connection readers
  pause (the server then closes a WS/SSE as a slow consumer and the client resumes from
  its cursor, losing nothing). Items are appended synchronously, so two connections
  never reorder them.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

import httpx

from pushsvc._tasks import cancel_and_wait
from pushsvc.client._backoff import Backoff
from pushsvc.client._errors import (
    Blocked,
    ClientClosed,
    ServerRejected,
    Transient,
)
from pushsvc.client._models import (
    CONNECTED,
    CONNECTING,
    DEGRADED,
    DISCONNECTED,
    GAP,
    TRANSPORTS,
    Event,
    Gap,
    Member,
    PresenceChange,
    parse_id,
)
from pushsvc.client._outbox import Outbox, Outgoing
from pushsvc.client._presence import PresenceViews
from pushsvc.client._transports import CONNECTIONS, Connection, Context, _detail
from pushsvc.exceptions import BadCursor
from pushsvc.protocol import cursor as cursor_codec

log = logging.getLogger("pushsvc.client")

StateCallback = Callable[[str, str | None], object]
GapCallback = Callable[[Gap], object]
PresenceCallback = Callable[[PresenceChange], object]
TokenSource = str | Callable[[], str | Awaitable[str]]
Item = Event | Gap


class Client:
    """Subscribe to ``channels`` at ``url`` (the server's base URL) and publish.

    ``async with Client(url, token, ["chat"]) as c: async for item in c: ...`` yields
    ``Event`` and ``Gap`` items; ``await c.publish("chat", {"text": "hi"})`` answers the
    event ID once the server acked it. ``token`` may be a callable (sync or async) that
    answers a fresh token before each connection.

    With ``presence=True`` (the token needs the presence grant on every channel),
    ``c.members(channel)`` and ``c.presence_counts(channel)`` tell who is on a channel, and
    ``on_presence(change)`` is called with each ``PresenceChange`` (a member appearing or
    disappearing, the client's own subject included).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        channels: Iterable[str] | str,
        *,
        transports: Iterable[str] = TRANSPORTS,
        cursor: str | None = None,
        on_state: StateCallback | None = None,
        on_gap: GapCallback | None = None,
        presence: bool = False,
        on_presence: PresenceCallback | None = None,
        sse_first_byte_timeout: float = 3.0,
        reprobe_interval: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        healthy_after: float = 10.0,
        heartbeat_grace: float = 2.5,
        poll_timeout: float = 20.0,
        connect_timeout: float = 10.0,
        outbox_limit: int = 1000,
        max_buffered: int = 1000,
        http_options: dict[str, Any] | None = None,
    ) -> None:
        self.channels = list(dict.fromkeys([channels] if isinstance(channels, str) else channels))
        if not self.channels:
            raise ValueError("at least one channel is needed")
        self.transports = tuple(dict.fromkeys(transports))
        unknown = [t for t in self.transports if t not in TRANSPORTS]
        if unknown or not self.transports:
            raise ValueError(f"transports must be among {TRANSPORTS}, got {unknown or 'none'}")
        self.on_state = on_state
        self.on_gap = on_gap
        self.presence = presence
        self.on_presence = on_presence
        self.reprobe_interval = reprobe_interval
        self.healthy_after = healthy_after
        self.poll_timeout = poll_timeout
        self.max_buffered = max(1, max_buffered)
        self.duplicates = 0  # events dropped because they were delivered already
        self.last_error: BaseException | None = None

        self._token_source = token
        self._hashes = {c: cursor_codec.channel_hash(c) for c in self.channels}
        self._positions: dict[str, tuple[int, int]] = {}
        self._segments: dict[str, str] = {}
        self._pinned = asyncio.Event()  # every channel has a position
        if cursor:
            try:
                start = cursor_codec.positions_for(cursor, self.channels)
            except BadCursor as exc:
                raise ValueError(f"invalid cursor: {exc}") from exc
            for c, pos in start.items():
                if pos is not None:
                    self._set_position(c, pos)
        self._app_cursor = cursor or None

        self._http_options = {"timeout": connect_timeout, **(http_options or {})}
        self._ctx = Context(
            base_url=url.rstrip("/"),
            channels=self.channels,
            http=httpx.AsyncClient(**self._http_options),
            streams=httpx.AsyncClient(
                **self._http_options, limits=httpx.Limits(max_keepalive_connections=0)
            ),
            heartbeat_grace=heartbeat_grace,
            connect_timeout=connect_timeout,
            sse_first_byte_timeout=sse_first_byte_timeout,
            poll_timeout=poll_timeout,
            presence=presence,
            presence_id=secrets.token_urlsafe(12),  # one per client, kept across polls
        )
        self._presence = PresenceViews(self.channels)
        self._serials = itertools.count()  # numbers the connections, for the views
        self._backoff = Backoff(backoff_base, backoff_cap)
        self._outbox = Outbox(outbox_limit)
        self._publish_pause_until = 0.0
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._available: tuple[str, ...] = self.transports
        self._negotiate_next = True
        self._blocked: set[str] = set()
        self._current: Connection | None = None
        self._state = DISCONNECTED
        self._state_transport: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._fatal: BaseException | None = None
        self.negotiated: dict[str, Any] = {}

    # --- public API ----------------------------------------------------------------------

    @property
    def cursor(self) -> str | None:
        """Resumes every channel after the last item the application took (pass it as
        ``cursor=`` to a new client, on any transport)."""
        if self._items:
            return self._app_cursor
        return self._cursor_now() or self._app_cursor

    @property
    def transport(self) -> str | None:
        """The transport in use (``None`` while disconnected)."""
        return self._current.transport if self._current is not None else None

    @property
    def state(self) -> str:
        return self._state

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    def members(self, channel: str) -> list[Member]:
        """The members of ``channel``'s presence, sorted by subject, as the last snapshot
        and the join/leave frames since tell (empty without ``presence=True``, and for a
        view the server truncated above its ``presence_snapshot_max``)."""
        return self._presence.members(channel)

    def presence_counts(self, channel: str) -> tuple[int, int]:
        """``(members, connections)`` on ``channel``, right for a truncated view too."""
        return self._presence.counts(channel)

    async def ready(self, timeout: float | None = None) -> str:
        """Start the client if needed and wait until every channel's start position is
        pinned (by the first negotiate, before any transport is tried); answer that
        cursor. From then on every event stored on the channels is delivered exactly once,
        whatever transport the client ends on. Raises ``TimeoutError`` after ``timeout``
        seconds, ``ClientClosed`` or the fatal error when the client stops first."""
        self.start()
        async with asyncio.timeout(timeout):
            while not self._pinned.is_set():
                if self._fatal is not None:
                    raise self._fatal
                if self._closed:
                    raise ClientClosed()
                self._ready.clear()
                waiters = {asyncio.ensure_future(self._pinned.wait())}
                waiters.add(asyncio.ensure_future(self._ready.wait()))
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        return self._cursor_now() or ""

    def start(self) -> None:
        if self._closed:
            raise ClientClosed()
        if self._task is None:
            self._task = asyncio.create_task(self._main(), name="pushsvc-client")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._task)
        self._outbox.close(ClientClosed())
        await self._ctx.http.aclose()
        await self._ctx.streams.aclose()
        self._current = None
        self._set_state(DISCONNECTED, None)
        self._ready.set()
        self._room.set()

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Item:
        while not self._items:
            if self._fatal is not None:
                raise self._fatal
            if self._closed:
                raise StopAsyncIteration
            self.start()
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self._app_cursor = item.cursor or self._app_cursor
        if len(self._items) < self.max_buffered:
            self._room.set()
        return item

    def publish(self, channel: str, data: Any, event: str = "message") -> asyncio.Future[str]:
        """Queue ``data`` (any JSON value) for ``channel``; the future answers the event ID
        once the server stored it. Raises ``OutboxFull`` when the outbox is full."""
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return self._enqueue(channel, event, text, None)

    def publish_bytes(
        self, channel: str, data: bytes, event: str = "message"
    ) -> asyncio.Future[str]:
        """Queue a binary payload (a binary frame on WebSocket, base64 over HTTP)."""
        return self._enqueue(channel, event, None, bytes(data))

    # --- items -----------------------------------------------------------------------

    def _set_position(self, channel: str, pos: tuple[int, int]) -> None:
        self._positions[channel] = pos
        self._segments[channel] = cursor_codec.segment(self._hashes[channel], pos)
        if len(self._positions) == len(self.channels):
            self._pinned.set()

    def _cursor_now(self) -> str | None:
        if not self._segments:
            return None
        return cursor_codec.VERSION + "".join(self._segments.values())

    def _push(self, item: Item) -> None:
        self._items.append(item)
        self._ready.set()

    def _accept_event(self, channel: str, name: str, event_id: str, data: Any) -> None:
        if channel not in self._hashes:
            return
        sid = parse_id(event_id)
        last = self._positions.get(channel)
        if last is not None and sid <= last:
            self.duplicates += 1
            return
        self._set_position(channel, sid)
        self._push(Event(channel, name, event_id, data, self._cursor_now() or ""))

    def _accept_gap(self, channel: str, after: str, until: str, transport: str) -> None:
        if channel not in self._hashes:
            return
        end = parse_id(until)
        last = self._positions.get(channel)
        if last is not None and end <= last:
            return
        self._set_position(channel, end)
        gap = Gap(channel, after, until, self._cursor_now() or "")
        self._push(gap)
        self._emit(GAP, transport)
        if self.on_gap is not None:
            self._call(self.on_gap, gap)

    def _seed(self, cursor: str | None) -> None:
        """Positions for channels without one yet (their tops at the first negotiate, or
        a server's ``subscribed``/poll cursor); a channel's position never moves back."""
        if not cursor or len(self._positions) == len(self.channels):
            return
        try:
            decoded = cursor_codec.decode(cursor)
        except BadCursor:
            return
        for c, key in self._hashes.items():
            if c not in self._positions and key in decoded:
                self._set_position(c, decoded[key])

    async def _wait_room(self) -> None:
        while len(self._items) >= self.max_buffered and not self._closed:
            self._room.clear()
            await self._room.wait()

    # --- outbox ----------------------------------------------------------------------

    def _enqueue(
        self, channel: str, event: str, text: str | None, raw: bytes | None
    ) -> asyncio.Future[str]:
        if self._closed:
            raise ClientClosed()
        if self._fatal is not None:
            raise self._fatal
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._outbox.add(Outgoing(channel, event, text, raw, future))
        return future

    async def _flush(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            msg = await self._outbox.next()
            while not msg.future.done():
                pause = self._publish_pause_until - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                try:
                    await conn.send(msg)
                    delay = 0.1
                    break
                except Transient as exc:
                    log.debug("publish over %s failed, retrying: %s", conn.transport, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    # --- connection management -------------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._set_state(CONNECTING, None)
                try:
                    self._ctx.token = await self._resolve_token()
                    if self._negotiate_next:
                        await self._negotiate()
                        self._negotiate_next = False
                    conn = await self._connect()
                except Transient as exc:
                    self.last_error = exc
                    self._negotiate_next = True  # nothing works: start from scratch
                    log.info("connect failed: %s", exc)
                else:
                    started = loop.time()
                    self.last_error = lost = await self._serve(conn)
                    log.info("connection lost (%s): %s", conn.transport, lost)
                    if isinstance(lost, Transient):
                        self._negotiate_next = lost.reauth
                        if lost.silent:
                            await self._drop_pooled_connections()
                    if loop.time() - started >= self.healthy_after:
                        self._backoff.reset()
                    if isinstance(lost, Transient) and lost.at_once:
                        # a drain (1012): the instance leaves, another one is up; a
                        # refused reconnect falls back to the backoff from its start
                        self._backoff.reset()
                        self._set_state(DISCONNECTED, None)
                        continue
                self._set_state(DISCONNECTED, None)
                await asyncio.sleep(self._backoff.next_delay())
        except ServerRejected as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: surface it to the application, do not hang
            log.exception("pushsvc client failed")
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self.last_error = exc
        self._current = None
        self._outbox.close(exc)
        self._set_state(DISCONNECTED, None)
        self._ready.set()

    async def _resolve_token(self) -> str:
        source = self._token_source
        if isinstance(source, str):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    async def _drop_pooled_connections(self) -> None:
        """After a connection went silent, its idle siblings in the pool are probably
        dead too (a dropped network): start with fresh ones rather than wait on them."""
        old, self._ctx.http = self._ctx.http, httpx.AsyncClient(**self._http_options)
        await old.aclose()

    async def _negotiate(self) -> None:
        ctx = self._ctx
        # the channels and what the client has: the answer pins the rest at their tops
        body = {"channels": self.channels, "cursor": self._cursor_now()}
        try:
            r = await ctx.http.post(
                ctx.base_url + "/v1/negotiate",
                json=body,
                headers=ctx.auth,
                timeout=ctx.connect_timeout,
            )
        except httpx.TransportError as exc:
            raise Transient(f"negotiate: {exc!r}") from exc
        if r.status_code != 200:
            detail = _detail(r.content)
            if r.status_code in (408, 429) or r.status_code >= 500:
                raise Transient(f"negotiate: HTTP {r.status_code} {detail}")
            raise ServerRejected(r.status_code, f"negotiate: {detail}")
        info = r.json()
        offered = info.get("transports") or TRANSPORTS
        self._available = tuple(t for t in self.transports if t in offered)
        if not self._available:
            raise ServerRejected(0, f"the server offers none of {self.transports}")
        ctx.endpoints = {str(k): str(v) for k, v in (info.get("endpoints") or {}).items()}
        ctx.heartbeat_interval = float(info.get("heartbeat_interval") or 15.0)
        limits = info.get("limits") or {}
        ctx.poll_timeout = min(self.poll_timeout, float(limits.get("poll_timeout_max", 25)))
        ctx.max_frame_bytes = int(limits.get("max_frame_bytes", ctx.max_frame_bytes))
        self.negotiated = info
        self._seed(info.get("cursor"))

    async def _open(self, transport: str) -> Connection:
        sink = _Sink(self, transport, next(self._serials))
        conn = CONNECTIONS[transport](self._ctx, sink)
        try:
            await conn.open()
        except BaseException:
            self._presence.forget(sink.serial)
            await conn.close()
            raise
        self._blocked.discard(transport)
        return conn

    async def _connect(self) -> Connection:
        """The best transport that works, skipping those found blocked (re-probed later)."""
        order = [t for t in self._available if t not in self._blocked] or list(self._available)
        for transport in order:
            try:
                return await self._open(transport)
            except Blocked as exc:
                self.last_error = exc
                self._blocked.add(transport)
                log.info("%s unavailable on this path: %s", transport, exc)
        self._blocked.clear()  # nothing worked: next time, try them all again
        raise Transient("no transport could connect")

    async def _reprobe(self, current: str) -> Connection:
        better = self._available[: self._available.index(current)]
        while True:
            await asyncio.sleep(self.reprobe_interval)
            for transport in better:
                try:
                    conn = await self._open(transport)
                except (Blocked, Transient, ServerRejected) as exc:
                    log.debug("re-probe of %s failed: %s", transport, exc)
                    continue
                log.info("moving up from %s to %s", current, transport)
                return conn

    async def _serve(self, conn: Connection) -> BaseException:
        """Pump ``conn`` (and the outbox over it) until it fails; move up meanwhile."""
        try:
            while True:
                self._current = conn
                if isinstance(conn.sink, _Sink):
                    self._report(self._presence.adopt(conn.sink.serial))
                best = conn.transport == self._available[0]
                self._set_state(CONNECTED if best else DEGRADED, conn.transport)
                run = asyncio.create_task(conn.run())
                flush = asyncio.create_task(self._flush(conn))
                tasks = {run, flush}
                probe: asyncio.Task[Connection] | None = None
                if not best and self.reprobe_interval > 0:
                    probe = asyncio.create_task(self._reprobe(conn.transport))
                    tasks.add(probe)  # type: ignore[arg-type]
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # never suppress CancelledError here: close() cancels this task,
                    # and a swallowed cancellation would reconnect forever
                    await cancel_and_wait(*tasks)
                    self._outbox.requeue()
                if (
                    probe is not None
                    and probe.done()
                    and not probe.cancelled()
                    and probe.exception() is None
                ):
                    await conn.close()
                    conn = probe.result()
                    continue
                failed = next(t for t in (run, flush, probe) if t is not None and t in done)
                exc = failed.exception() or Transient("connection ended")
                if isinstance(exc, ServerRejected):
                    raise exc
                if not isinstance(exc, Transient | Blocked):
                    log.warning("%s connection failed", conn.transport, exc_info=exc)
                return exc
        finally:
            self._current = None
            await conn.close()

    # --- presence ------------------------------------------------------------------------

    def _accept_presence(self, source: int, frames: list[dict[str, Any]]) -> None:
        self._report(self._presence.receive(source, frames))

    def _report(self, changes: list[PresenceChange]) -> None:
        if self.on_presence is not None:
            for change in changes:
                self._call(self.on_presence, change)

    # --- callbacks -----------------------------------------------------------------------

    def _set_state(self, state: str, transport: str | None) -> None:
        if (state, transport) != (self._state, self._state_transport):
            self._state, self._state_transport = state, transport
            self._emit(state, transport)

    def _emit(self, state: str, transport: str | None) -> None:
        if self.on_state is not None:
            self._call(self.on_state, state, transport)

    @staticmethod
    def _call(callback: Callable[..., object], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("pushsvc client callback failed")


class _Sink:
    """What connections call back into (kept off the ``Client``'s public surface)."""

    __slots__ = ("c", "serial", "transport")

    def __init__(self, client: Client, transport: str, serial: int) -> None:
        self.c = client
        self.transport = transport
        self.serial = serial  # this connection's number (PresenceViews.adopt)

    def event(self, channel: str, name: str, event_id: str, data: Any) -> None:
        self.c._accept_event(channel, name, event_id, data)

    def gap(self, channel: str, after: str, until: str) -> None:
        self.c._accept_gap(channel, after, until, self.transport)

    def presence(self, frames: list[dict[str, Any]]) -> None:
        self.c._accept_presence(self.serial, frames)

    def seed(self, cursor: str | None) -> None:
        self.c._seed(cursor)

    def acked(self, msg_id: str, event_id: str) -> None:
        self.c._outbox.acked(msg_id, event_id)

    def rejected(self, msg_id: str, exc: BaseException) -> None:
        self.c._outbox.failed(msg_id, exc)

    def retry_later(self, msg_id: str) -> None:
        self.c._outbox.retry_later(msg_id)
        self.c._publish_pause_until = asyncio.get_running_loop().time() + 1.0

    def resume_cursor(self) -> str | None:
        return self.c._cursor_now()

    async def room(self) -> None:
        await self.c._wait_room()
