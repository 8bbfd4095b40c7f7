"""The hub: one per process. ONE backend listener, a registry channel -> local sessions,
and fan-out of pre-encoded frames (DESIGN decisions 2 and 3).

Redis work per publish is independent of the number of subscribers: the backend's single
listener hands each new event to ``_dispatch`` once, and the hub loops over local sessions.

Listening on a channel starts when its first local session joins and stops when the last
one leaves; both go through one lock so that a leave racing a join never leaves a
subscribed session deaf. Heartbeats run on one process-wide timer, not a task per
connection: each tick queues a heartbeat on every session that sent nothing since the
previous tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from pushsvc.backends.base import Backend
from pushsvc.metrics import Metrics
from pushsvc.protocol import codes
from pushsvc.protocol.events import Event
from pushsvc.session import Session
from pushsvc.settings import Settings
from pushsvc.wires import Frame, Wire

log = logging.getLogger("pushsvc.hub")

# Sessions written per flush pass before the loop polls its sockets again: small enough
# that publishes and client frames are read while a large fan-out is being written.
FLUSH_CHUNK = 64


class Hub:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.sessions: set[Session] = set()
        self._subs: dict[str, set[Session]] = {}
        self._listening: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.closing = False
        self.metrics = Metrics(backend, settings)
        self._dirty: deque[Session] = deque()
        self._flushing = False
        backend.set_sink(self._dispatch)

    async def start(self) -> None:
        await self.backend.start()
        self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="pushsvc-heartbeats")

    def close_sessions(self) -> None:
        """Close every session (streams end, WebSockets get 1001), keeping the backend.

        A server calls this when its shutdown starts: uvicorn waits for open responses
        before the lifespan shutdown, and SSE streams never end by themselves. Sessions
        registered afterwards are closed at once."""
        self.closing = True
        for session in list(self.sessions):
            session.close(codes.WS_1001_GOING_AWAY, "server shutting down")

    async def close(self) -> None:
        """Close every session (streams end, WebSockets get 1001) and the backend."""
        self.close_sessions()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        for task in list(self._tasks):
            task.cancel()
        await self.backend.close()

    # --- registry ----------------------------------------------------------------------

    def register(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics.opened(session)
        if self.closing:
            session.close(codes.WS_1001_GOING_AWAY, "server shutting down")

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

    def leave(self, session: Session, channels: list[str]) -> None:
        for c in channels:
            subs = self._subs.get(c)
            if subs is None:
                continue
            subs.discard(session)
            if not subs:
                del self._subs[c]
                if not self.closing:
                    self._spawn(self._maybe_unlisten(c))

    async def _maybe_unlisten(self, channel: str) -> None:
        async with self._lock:
            if channel in self._listening and not self._subs.get(channel):
                self._listening.discard(channel)
                await self.backend.unlisten(channel)

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
        subs = self._subs.get(event.channel)
        if subs:
            frames: dict[type[Wire], Frame] = {}  # encoded once per wire for all sessions
            for session in tuple(subs):
                session.on_live(event, frames)

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
        for _ in range(min(len(dirty), FLUSH_CHUNK)):
            session = dirty.popleft()
            session.scheduled = False
            writer = session.writer
            if writer is not None:
                writer.flush(session)
        if dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._flushing = False

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
