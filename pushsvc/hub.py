"""The hub: one per process. ONE backend listener, a registry channel -> local sessions,
and fan-out of pre-encoded frames (DESIGN decisions 2 and 3).

Redis work per publish is independent of the number of subscribers: the backend's single
listener hands each new event to ``_dispatch`` once, and the hub loops over local sessions.

Listening on a channel starts when its first local session joins and stops when the last
one leaves; both go through one lock so that a leave racing a join never leaves a
subscribed session deaf. Heartbeats run on one process-wide timer, not a task per
connection: each tick queues a heartbeat on every session that sent nothing since the
previous tick.

Presence (DESIGN 8): the hub holds this process's presence entries (one per connection
and channel, added by ``presence_track``) and renews them all in ONE batched backend call
per ``presence_refresh_interval`` on a second process-wide timer; that call also sweeps
the channels whose presence is watched here (``on_presence_diff``), so the members of a
crashed instance leave (with diffs) where someone watches. Only those: sweeping every
listened channel would cost Redis a script per channel per interval in a deployment that
does not use presence at all. An entry the backend lost meanwhile (expired during a long
pause, a Redis restart) is joined again if it is still tracked. Diffs of listened
channels go to the callbacks registered with ``on_presence_diff``; none of this touches
the event path.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from pushsvc._tasks import cancel_and_wait
from pushsvc.backends.base import Backend, PresenceDiff, PresenceEntry, ReadResult
from pushsvc.metrics import Metrics
from pushsvc.protocol import codes
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.wires import Frame, Wire
from pushsvc.session import Session
from pushsvc.settings import Settings

log = logging.getLogger("pushsvc.hub")

# Sessions written per flush pass before the loop polls its sockets again: small enough
# that publishes and client frames are read while a large fan-out is being written.
FLUSH_CHUNK = 64
# Seconds a channel stays listened after its last local session left.
LISTEN_LINGER = 10.0
# Live events remembered per listened channel (RECENT_EVENTS to twice that), to answer
# reads near the head. Kept small: a process may listen to many channels, and a reader
# further behind is served by the backend as before.
RECENT_EVENTS = 64
# Seconds a closing hub spends removing its presence entries (the rest expire by themselves).
PRESENCE_LEAVE_ON_CLOSE = 2.0

PresenceCallback = Callable[[PresenceDiff], None]


class RecentEvents:
    """The latest events the listener delivered on one channel, in log order and without
    holes since the channel was listened to (``reconnects`` says which listener
    connection: after a reconnect the hub starts a new one). A read after one of these
    IDs is exactly the events that follow it here; so is a read after ``anchor``, a top
    of the log that a backend read confirmed while this was already recording (the
    position of a client that has seen everything, on a quiet channel)."""

    __slots__ = ("anchor", "events", "ids", "reconnects")

    def __init__(self, reconnects: int) -> None:
        self.reconnects = reconnects
        self.ids: list[StreamId] = []
        self.events: list[Event] = []
        self.anchor: StreamId | None = None

    def add(self, event: Event) -> None:
        ids = self.ids
        if ids and event.id <= ids[-1]:
            return  # a repeat (a listener re-read): already here
        ids.append(event.id)
        self.events.append(event)
        if len(ids) > 2 * RECENT_EVENTS:  # trim in bulk: amortized O(1) per event
            if self.anchor is not None and self.anchor < ids[-RECENT_EVENTS - 1]:
                self.anchor = None  # events after it are being forgotten
            del ids[:-RECENT_EVENTS]
            del self.events[:-RECENT_EVENTS]

    def confirm(self, top: StreamId) -> None:
        """A backend read found nothing after ``top``: what follows is recorded here."""
        if self.anchor is None or top > self.anchor:
            self.anchor = top

    def after(self, position: StreamId, limit: int) -> list[Event] | None:
        """The events after ``position`` (at most ``limit``), or None when ``position``
        is neither a remembered event nor the anchor (the backend must answer)."""
        ids = self.ids
        i = bisect.bisect_left(ids, position)
        if i < len(ids) and ids[i] == position:
            return self.events[i + 1 : i + 1 + limit]
        if position == self.anchor:
            return self.events[i : i + limit]
        return None


class Hub:
    def __init__(
        self, backend: Backend, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        """``metrics``: the app's (``create_app`` builds it, timing ``backend``); a hub
        built alone (tests, an embedder) counts into a fresh one of its own."""
        self.backend = backend
        self.settings = settings
        self.sessions: set[Session] = set()
        self._subs: dict[str, set[Session]] = {}
        self._listening: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.closing = False
        self.draining = False  # ``drain()`` began: readiness answers 503
        self._close_code = codes.WS_1001_GOING_AWAY
        self._close_reason = "server shutting down"
        self.metrics = metrics if metrics is not None else Metrics(settings=settings)
        self._dirty: deque[Session] = deque()
        self._recent: dict[str, RecentEvents] = {}  # listened channels: latest live events
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._left: dict[str, float] = {}
        self._flushing = False
        self._flushed: asyncio.Event | None = None  # set when the flush passes end (drain)
        # presence: this process's entries by (channel, conn_id), and diff callbacks
        self.instance_id = secrets.token_hex(6)
        self._conn_ids = itertools.count(1)
        self._presence: dict[tuple[str, str], PresenceEntry] = {}
        self._presence_callbacks: dict[str, dict[int, PresenceCallback]] = {}
        self._callback_ids = itertools.count(1)
        self._presence_task: asyncio.Task[None] | None = None
        self._presence_reconnects = 0
        backend.set_sink(self._dispatch, self._dispatch_gap)
        backend.set_presence_sink(self._dispatch_presence)

    async def start(self) -> None:
        await self.backend.start()
        self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="pushsvc-heartbeats")
        self._presence_task = asyncio.create_task(
            self._presence_refresher(), name="pushsvc-presence"
        )

    def close_sessions(
        self, code: int = codes.WS_1001_GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Close every session (streams end, WebSockets get ``code``), keeping the backend.

        A server calls this when its shutdown starts (``drain``): uvicorn waits for open
        responses before the lifespan shutdown, and SSE streams never end by themselves.
        Sessions registered afterwards are closed at once, with the same code."""
        if not self.closing:
            self.closing = True
            self._close_code, self._close_reason = code, reason
        for session in list(self.sessions):
            session.close(self._close_code, self._close_reason)

    async def drain(self, flush_timeout: float = 1.0) -> None:
        """The start of a graceful shutdown: readiness answers 503 from here on; every
        session is told to move (WebSockets close 1012, SSE streams end with a ``close``
        event carrying 1012, pending long-polls answer at once with what they have and
        their cursor); returns once what was queued, closes included, is written (or
        after ``flush_timeout``: a connection whose socket pushes back finishes on its
        own, and its client resumes from its cursor either way)."""
        self.draining = True
        self.close_sessions(codes.WS_1012_SERVICE_RESTART, "service restart")
        if self._flushing:
            self._flushed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._flushed.wait()
            self._flushed = None

    async def close(self) -> None:
        """Close every session (streams end, WebSockets get 1001, or 1012 after a
        ``drain``) and the backend."""
        self.close_sessions()
        await cancel_and_wait(self._heartbeat_task, self._presence_task)
        await self._leave_all()
        for task in list(self._tasks):
            task.cancel()
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        await self.backend.close()

    # --- registry ----------------------------------------------------------------------

    def register(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics.opened(session)
        if self.closing:
            session.close(self._close_code, self._close_reason)

    def forget(self, session: Session) -> None:
        if session in self.sessions:
            self.metrics.closed(session)
        self.sessions.discard(session)

    async def join(self, session: Session, channels: list[str]) -> None:
        """Register ``session`` on ``channels``; returns once live events flow to it."""
        for c in channels:
            self._subs.setdefault(c, set()).add(session)
        for c in channels:
            if c not in self._listening:
                async with self._lock:
                    if c not in self._listening and self._subs.get(c):
                        await self.backend.listen(c)
                        self._listening.add(c)
                        self._recent[c] = RecentEvents(self.backend.listener_status().reconnects)

    def leave(self, session: Session, channels: list[str]) -> None:
        """Unregister ``session``. A channel left by its last session is still listened
        to for ``LISTEN_LINGER`` seconds: long-polls leave and rejoin on every request,
        and a reconnecting client rejoins within a second or two."""
        for c in channels:
            subs = self._subs.get(c)
            if subs is None:
                continue
            subs.discard(session)
            if not subs:
                del self._subs[c]
                if not self.closing:
                    self._left[c] = time.monotonic()
                    if c not in self._lingering:
                        self._lingering[c] = asyncio.get_running_loop().call_later(
                            LISTEN_LINGER, self._linger_over, c
                        )

    def _linger_over(self, channel: str) -> None:
        del self._lingering[channel]
        if self._subs.get(channel):
            return  # joined again
        left = self._left.get(channel, 0.0)
        remaining = left + LISTEN_LINGER - time.monotonic()
        if remaining > 0.05:  # left again since the timer was set: wait from then
            self._lingering[channel] = asyncio.get_running_loop().call_later(
                remaining, self._linger_over, channel
            )
            return
        self._left.pop(channel, None)
        self._spawn(self._maybe_unlisten(channel))

    async def _maybe_unlisten(self, channel: str) -> None:
        async with self._lock:
            if channel in self._listening and not self._subs.get(channel):
                self._listening.discard(channel)
                self._recent.pop(channel, None)
                await self.backend.unlisten(channel)

    def _retained(self, events: list[Event], remembered: int) -> bool:
        """Whether the log surely still holds ``events``, so that an answer from memory
        is the log's: retention may have trimmed them (the reader then gets a gap from
        the backend). Safe as long as the listener is less than half of ``max_len``
        events behind the log, and its clock within a minute of the log's."""
        retention = self.backend.retention
        if remembered >= retention.max_len // 2:
            return False
        oldest_kept_ms = (time.time() - retention.max_age + 60.0) * 1000
        return not events or events[0].id[0] > oldest_kept_ms

    async def read_after(self, channel: str, after: StreamId, limit: int) -> ReadResult:
        """The log after ``after``: from the events this process saw live on the channel
        when ``after`` is one of them or the confirmed top (no backend round trip: a
        long-poll, a client reconnecting near the head), else from the backend."""
        recent = self._recent.get(channel)
        if recent is None:
            return await self.backend.read_after(channel, after, limit)
        status = self.backend.listener_status()
        if not status.connected or status.reconnects != recent.reconnects:
            # the listener reconnected: what it saw may have a hole; start afresh
            recent = self._recent[channel] = RecentEvents(status.reconnects)
        else:
            events = recent.after(after, limit)
            if events is not None and self._retained(events, len(recent.ids)):
                self.metrics.recent_hit()
                return ReadResult(events, events[-1].id if events else after)
        result = await self.backend.read_after(channel, after, limit)
        if (
            result.gap is None
            and len(result.events) < limit  # read up to the top
            and self._recent.get(channel) is recent
            and recent.reconnects == self.backend.listener_status().reconnects
        ):
            recent.confirm(result.top)
        return result

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    def subscriber_count(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    # --- fan-out (hot path) ------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        recent = self._recent.get(event.channel)
        if recent is not None:
            recent.add(event)
        subs = self._subs.get(event.channel)
        if subs:
            frames: dict[type[Wire], Frame] = {}  # encoded once per wire for all sessions
            sessions = tuple(subs)
            if self._flushing or len(sessions) <= FLUSH_CHUNK:
                for session in sessions:
                    session.on_live(event, frames)
                return
            # Nothing waits to be written (a light load): the first chunk is written as
            # soon as it is queued, before the rest is dispatched, so that the first
            # subscribers do not wait for a whole large fan-out. Under load a flush pass
            # is pending and this is not done: events coalesce as before. (The pass that
            # the first chunk scheduled writes the rest: one pass, as ever.)
            for session in sessions[:FLUSH_CHUNK]:
                session.on_live(event, frames)
            self._write(FLUSH_CHUNK)
            for session in sessions[FLUSH_CHUNK:]:
                session.on_live(event, frames)

    def _dispatch_gap(self, gap: Gap) -> None:
        """The listener found events trimmed before it could pass them on: every session
        on the channel that had not got past them gets the gap in-band."""
        if gap.channel in self._recent:  # what it remembered is no longer contiguous
            self._recent[gap.channel] = RecentEvents(self.backend.listener_status().reconnects)
        for session in tuple(self._subs.get(gap.channel, ())):
            session.on_gap(gap)

    def schedule(self, session: Session) -> None:
        """Queue ``session`` for the next flush pass (``Session.push`` calls this once
        until the session is flushed)."""
        self._dirty.append(session)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is queued on up to ``FLUSH_CHUNK`` scheduled sessions, then let the
        loop poll its sockets before the next chunk. Publishes that arrive meanwhile
        queue behind the frames not yet written, so a busy server writes several events
        per connection at once (and one WebSocket message, where the client allows)."""
        dirty = self._dirty
        self._write(FLUSH_CHUNK)
        if dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._flushing = False
            if self._flushed is not None:
                self._flushed.set()

    def _write(self, count: int) -> None:
        """Write what is queued on the first ``count`` scheduled sessions."""
        dirty = self._dirty
        for _ in range(min(len(dirty), count)):
            session = dirty.popleft()
            session.scheduled = False
            writer = session.writer
            if writer is not None:
                writer.flush(session)

    # --- presence ------------------------------------------------------------------------

    def new_conn_id(self) -> str:
        """A presence connection ID, unique across processes."""
        return f"{self.instance_id}.{next(self._conn_ids)}"

    def presence_entries(self) -> list[PresenceEntry]:
        return list(self._presence.values())

    async def presence_track(self, entry: PresenceEntry) -> int:
        """Add ``entry`` to the channel's presence and keep it renewed until
        ``presence_untrack``; answer the channel's presence ``seq`` after it. Raises
        ``BackendError`` when the backend refused it (then it is not tracked)."""
        key = (entry.channel, entry.conn_id)
        self._presence[key] = entry
        self.metrics.presence_entries = len(self._presence)
        try:
            return await self.backend.presence_join(entry)
        except BaseException:
            if self._presence.get(key) is entry:
                del self._presence[key]
                self.metrics.presence_entries = len(self._presence)
                # it may have been stored before the failure: take it out again
                self._spawn(self._leave(entry.channel, entry.conn_id))
            raise

    async def presence_untrack(self, channel: str, conn_id: str) -> None:
        """Remove a tracked entry. A backend failure is logged, not raised: the entry,
        no longer renewed, then expires within ``presence_ttl``."""
        if self._presence.pop((channel, conn_id), None) is None:
            return
        self.metrics.presence_entries = len(self._presence)
        await self._leave(channel, conn_id)

    def presence_forget(self, entry: PresenceEntry, leave: bool = True) -> None:
        """Stop tracking ``entry`` (only that object: a newer one for the same connection
        ID stays); ``leave``: remove it from the backend now (in a task), else let it
        expire unless someone renews it (a long-poll's next request)."""
        key = (entry.channel, entry.conn_id)
        if self._presence.get(key) is not entry:
            return
        del self._presence[key]
        self.metrics.presence_entries = len(self._presence)
        if leave:
            self._spawn(self._leave(entry.channel, entry.conn_id))

    async def _leave(self, channel: str, conn_id: str) -> None:
        try:
            await self.backend.presence_leave(channel, conn_id)
        except Exception as exc:
            log.warning("presence leave on %r failed (it will expire): %s", channel, exc)

    async def _leave_all(self) -> None:
        entries, self._presence = list(self._presence.values()), {}
        self.metrics.presence_entries = 0
        if not entries:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PRESENCE_LEAVE_ON_CLOSE):
                await asyncio.gather(*(self._leave(e.channel, e.conn_id) for e in entries))

    def on_presence_diff(self, channel: str, callback: PresenceCallback) -> Callable[[], None]:
        """Call ``callback`` with every presence diff of ``channel`` while this process
        listens to it (a session joined it). Answers the function that unregisters it."""
        key = next(self._callback_ids)
        self._presence_callbacks.setdefault(channel, {})[key] = callback

        def cancel() -> None:
            callbacks = self._presence_callbacks.get(channel)
            if callbacks is not None:
                callbacks.pop(key, None)
                if not callbacks:
                    del self._presence_callbacks[channel]

        return cancel

    def _dispatch_presence(self, diff: PresenceDiff) -> None:
        callbacks = self._presence_callbacks.get(diff.channel)
        if not callbacks:
            return
        for callback in tuple(callbacks.values()):
            try:
                callback(diff)
            except Exception:
                log.exception("a presence callback failed on %r", diff.channel)

    async def refresh_presence(self) -> None:
        """Renew every local entry and sweep the watched channels: one backend call
        (plus one to join again the entries the backend lost, when there are any)."""
        entries = list(self._presence.values())
        sweep = list(self._presence_callbacks)
        if not entries and not sweep:
            return
        reconnects = self.backend.listener_status().reconnects
        if reconnects != self._presence_reconnects:
            # diffs sent while the listener was away are lost: fresh snapshots for all
            self._presence_reconnects = reconnects
            for session in tuple(self.sessions):
                if session.presence:
                    self._spawn(session.resync_presence())
        missing = await self.backend.presence_refresh(entries, sweep)
        live = [e for e in missing if self._presence.get((e.channel, e.conn_id)) is e]
        if live:
            log.info("presence: joining again %d entries the backend lost", len(live))
            await self.backend.presence_join_many(live)

    async def _presence_refresher(self) -> None:
        """The presence timer: one refresh per interval for the whole process."""
        interval = self.settings.presence_refresh_interval
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.refresh_presence()
            except Exception as exc:
                log.warning("presence refresh failed: %s", exc)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    # --- heartbeats ----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """The one process-wide timer: heartbeats, token expiry and idle WebSockets."""
        interval = min(self.settings.heartbeat_interval, self.settings.idle_timeout)
        while True:
            await asyncio.sleep(interval)
            self.tick(time.time(), time.monotonic())

    def tick(self, now: float, monotonic_now: float) -> None:
        idle_before = monotonic_now - self.settings.idle_timeout
        for session in tuple(self.sessions):
            if session.principal.expired(now):
                session.push(session.wire.control("token-expired", reason="token expired"))
                session.close(codes.WS_4402_TOKEN_EXPIRED, "token expired")
            elif (
                session.wire.idle_closes
                and not session.channels
                and (session.last_seen < idle_before)
            ):
                session.close(codes.WS_4000_HEARTBEAT_TIMEOUT, "idle: no subscription, no frame")
            elif session.busy:
                session.busy = False
            elif session.wire.heartbeat:
                session.push(session.wire.heartbeat)
                session.busy = False
