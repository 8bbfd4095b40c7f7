"""A session: one client connection's identity, channels, cursor and outbound queue.

Transports only pump a session onto their wire. The hub calls ``on_live`` for every live
event of a subscribed channel; frames are encoded once per event (``Wire.event`` with
``cursor=None`` for a single-channel session is a fully cached frame) and queued. A
session with a ``writer`` (WebSocket, SSE) is then scheduled on the hub, which flushes
every scheduled session in one pass (``pushsvc.writer``): no task wakes per
connection per event. A session without one (long-poll) wakes its waiting request.

The outbound queue is bounded in messages and bytes. Live events never wait: on overflow
the session is closed as a slow consumer, and the client resumes from the cursor of the
last frame it received, so nothing is lost. History replay, on the other hand, waits for
room in the queue (it is pulled from the log at the pace of the writer). These decisions
(the resume merge, the queue bounds, the closes) are ``pushsvc.protocol.session.SessionCore``'s,
free of I/O; ``Session`` adds what awaits: the backend reads the core asks for, waiting
for room, presence, and waking the hub's writer or a waiting long-poll.

A session knows the hub and its writer only through the ``Registry`` and ``Flusher``
protocols below, which this module owns: the hub and the writer import the session, never
the other way round (no back edge in the import graph, not even a ``TYPE_CHECKING`` one).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable
from typing import Protocol

from pushsvc.auth import Principal
from pushsvc.backends.base import Backend, ReadResult
from pushsvc.metrics import Metrics
from pushsvc.protocol import codes
from pushsvc.protocol.events import Gap
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.presence import (
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    presence_version,
)
from pushsvc.protocol.session import Replay, SessionCore
from pushsvc.protocol.wires import Frame, Wire
from pushsvc.settings import Settings

_ids = itertools.count(1)


class Registry(Protocol):
    """What a session needs from the registry that dispatches to it (``pushsvc.hub.Hub``).

    ``settings``, ``backend`` and ``metrics`` are what the process shares; the transports
    read them through ``session.hub`` too."""

    @property
    def settings(self) -> Settings: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def metrics(self) -> Metrics: ...

    def register(self, session: Session) -> None: ...
    def forget(self, session: Session) -> None: ...
    async def join(self, session: Session, channels: list[str]) -> None: ...
    def leave(self, session: Session, channels: list[str]) -> None: ...
    def schedule(self, session: Session) -> None: ...
    async def read_after(self, channel: str, after: StreamId, limit: int) -> ReadResult: ...
    def new_conn_id(self) -> str: ...
    def on_presence_diff(
        self, channel: str, callback: Callable[[PresenceDiff], None]
    ) -> Callable[[], None]: ...
    async def presence_track(self, entry: PresenceEntry) -> int: ...
    def presence_forget(self, entry: PresenceEntry, leave: bool = True) -> None: ...


class Flusher(Protocol):
    """What a session needs from its writer (``pushsvc.writer.Writer``): the hub's flush
    pass calls ``flush`` on each scheduled session's writer."""

    def flush(self, session: Session) -> None: ...
    def cancel(self) -> None: ...


class Session(SessionCore):
    """The asyncio side of a session: it feeds ``SessionCore`` (awaits the log reads
    its ``replay`` asks for, waits for room when it says so) and tells the hub or a
    waiting long-poll when frames are queued. Decisions live in the core."""

    __slots__ = (
        "_drained",
        "_wakeup",
        "finished",
        "hub",
        "id",
        "last_seen",
        "metrics",
        "presence",
        "presence_keep",
        "principal",
        "writer",
    )

    def __init__(self, hub: Registry, principal: Principal, wire: Wire) -> None:
        settings = hub.settings
        super().__init__(
            wire,
            queue_messages=settings.outbound_queue_messages,
            queue_bytes=settings.outbound_queue_bytes,
            history_page=settings.history_page,
            max_channels=settings.max_channels_per_session,
        )
        self.id = next(_ids)
        self.hub = hub
        self.metrics = hub.metrics
        self.principal = principal
        # created on first use: most sessions never wait for either
        self._wakeup: asyncio.Future[bool] | None = None  # long-poll: waiting for frames
        self._drained: asyncio.Event | None = None  # history replay: room in the queue
        self.writer: Flusher | None = None  # set by WebSocket and SSE transports
        self.finished = False  # the writer wrote the close: nothing more goes out
        self.last_seen = time.monotonic()  # last frame from the client (WebSocket)
        # channels whose presence this session joined (created on first use)
        self.presence: dict[str, PresenceFeed] | None = None
        # Long-poll: the entry outlives the request (the next poll renews it); on release
        # it is no longer renewed here and expires unless a poll comes back.
        self.presence_keep = False

    # --- subscription and resume -------------------------------------------------------

    async def subscribe(self, channels: list[str], positions: dict[str, StreamId | None]) -> None:
        """Subscribe with resume (DESIGN decision 5): register live first, then replay."""
        new = await self.join(channels, positions)
        await self.catch_up(new, positions)

    async def join(self, channels: list[str], positions: dict[str, StreamId | None]) -> list[str]:
        """Register live on the channels not yet subscribed and seed their positions;
        queue a ``subscribed`` answer (always, even when nothing was new). Returns the new
        channels: ``catch_up`` replays them and lets their live events through."""
        new = self.add_channels(channels)
        try:
            await self.hub.join(self, new)
            backend = self.hub.backend
            for c in new:
                start = positions.get(c)
                if start is None:
                    # Quiet-channel-safe: seed at the top, read after registering live.
                    start = await backend.top(c)
                self.seed(c, start)
        except BaseException:
            self.unsubscribe(new)  # nothing half-subscribed stays behind
            raise
        self.push(self.wire.subscribed(list(self.channels), self.cursor))
        return new

    async def catch_up(self, new: list[str], positions: dict[str, StreamId | None]) -> None:
        """Replay what the log holds after each new channel's position, then go live."""
        for c in new:
            if self.bounded_replay and self.batch_full():
                break
            await self.replay_log(c)
            if positions.get(c) is not None:
                self.metrics.resumed(self, c)

    async def replay_log(self, channel: str) -> None:
        """Replay what the log holds after ``channel``'s position, then let its buffered
        live events through (``catch_up``; alone, by a long-poll that answers from the
        log without listening live: ``pushsvc.transports.longpoll``)."""
        pos = self.channels.get(channel)
        if pos is None:
            return
        page = self.history_page
        while True:
            step = self.replay(channel, pos)
            if step is Replay.READ:
                result = await self.hub.read_after(channel, pos.position, page)
                self.history(channel, pos, result.events, result.gap, result.top)
            elif step is Replay.ROOM:
                await self._wait_room()
            else:
                return

    def _gapped(self, gap: Gap) -> None:
        self.metrics.gap(self, gap)

    async def _wait_room(self) -> None:
        while not self.room() and self.close_code is None:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()

    def unsubscribe(self, channels: list[str]) -> None:
        gone = self.drop_channels(channels)
        self.leave_presence(gone)
        self.hub.leave(self, gone)

    # --- presence ----------------------------------------------------------------------

    async def join_presence(
        self, channels: list[str], conn_id: str | None = None, *, known: str | None = None
    ) -> None:
        """Join the presence of ``channels`` (subscribed already, so listened): take
        their diffs from now on, add this connection's entry, then queue each channel's
        snapshot and the diffs that came meanwhile and are newer than it (by ``seq``).
        ``known``: the ``presence_version`` the client holds (long-poll); when nothing
        changed since, no snapshot is read or sent (the join answered the seqs)."""
        hub = self.hub
        feeds = self.presence if self.presence is not None else {}
        self.presence = feeds
        if conn_id is None:
            conn_id = next(iter(feeds.values())).entry.conn_id if feeds else hub.new_conn_id()
        subject, info = self.principal.subject, self.principal.presence_info()
        new = [c for c in channels if c not in feeds]
        for c in new:
            feed = feeds[c] = PresenceFeed(PresenceEntry(c, conn_id, subject, info))
            feed.cancel = hub.on_presence_diff(c, functools.partial(self._on_presence, feed))
        try:
            seqs = await asyncio.gather(*(hub.presence_track(feeds[c].entry) for c in new))
            if known is not None and known == presence_version(seqs):
                for c, seq in zip(new, seqs, strict=True):
                    self._settle(feeds[c], seq)  # the client holds this presence already
            else:
                self.announce_presence(await self.read_presence(new))
        except BaseException:
            self.leave_presence(new)
            raise

    def presence_version(self) -> str:
        """What the client holds after what was queued: the last change of each channel."""
        return presence_version(feed.seq for feed in (self.presence or {}).values())

    async def read_presence(self, channels: list[str]) -> list[tuple[str, PresenceSnapshot]]:
        limit = self.hub.settings.presence_snapshot_max
        backend = self.hub.backend
        snaps = await asyncio.gather(*(backend.presence_snapshot(c, limit) for c in channels))
        return list(zip(channels, snaps, strict=True))

    def announce_presence(self, snapshots: list[tuple[str, PresenceSnapshot]]) -> None:
        """Queue the snapshots, then the diffs held back while they were read, and let
        diffs through from now on."""
        for channel, snap in snapshots:
            feed = (self.presence or {}).get(channel)
            if feed is not None:
                self.push(self.wire.presence(channel, snap))
                self._settle(feed, snap.seq)

    def _settle(self, feed: PresenceFeed, seq: int) -> None:
        """The client holds the channel's presence up to ``seq``: pass the held diffs
        that are newer, and the diffs to come."""
        held, feed.held = feed.held, None
        feed.seq = seq
        for diff in held or ():
            self._pass_diff(feed, diff)

    async def resync_presence(self) -> None:
        """Send fresh snapshots (diffs may have been lost: the listener reconnected)."""
        feeds = self.presence or {}
        for feed in feeds.values():
            if feed.held is None:
                feed.held = []
        channels = list(feeds)
        if channels:
            self.announce_presence(await self.read_presence(channels))

    def _on_presence(self, feed: PresenceFeed, diff: PresenceDiff) -> None:
        if self.close_code is not None:
            return
        if feed.held is not None:
            feed.held.append(diff)
            return
        self._pass_diff(feed, diff)

    def _pass_diff(self, feed: PresenceFeed, diff: PresenceDiff) -> None:
        # A diff that the snapshot already holds (it was on its way while the snapshot
        # was read) would report a change the client has seen: dropped by its seq.
        if diff.seq > feed.seq:
            feed.seq = diff.seq
            self.push(self.wire.presence_diff(diff))

    def leave_presence(self, channels: list[str]) -> None:
        feeds = self.presence
        if not feeds:
            return
        for c in channels:
            feed = feeds.pop(c, None)
            if feed is not None:
                feed.cancel()
                self.hub.presence_forget(feed.entry, leave=not self.presence_keep)

    # --- notifications ----------------------------------------------------------------

    def _notify(self) -> None:
        if self.writer is not None:
            self.schedule()
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(True)

    def schedule(self) -> None:
        """Put this session on the hub's next write pass (once until it is written)."""
        if not self.scheduled:
            self.scheduled = True
            self.hub.schedule(self)

    # --- transport side ----------------------------------------------------------------

    async def wait(self, timeout: float | None = None) -> bool:
        """Long-poll: wait until frames are queued or the session closed; False on
        timeout. One future and one timer handle: no task, unlike ``wait_for``."""
        if self.queue or self.close_code is not None:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._wakeup = waiter
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    def drain(self) -> list[Frame]:
        frames = super().drain()
        if self._drained is not None:
            self._drained.set()
        return frames

    def close(self, code: int = codes.WS_1000_NORMAL_CLOSURE, reason: str = "") -> None:
        if self.close_code is None:
            super().close(code, reason)
            if self._drained is not None:
                self._drained.set()

    def release(self) -> None:
        """Leave every channel; the transport calls this once when the connection ends."""
        self.close()
        self.finished = True
        if self.writer is not None:
            self.writer.cancel()
        channels = list(self.channels)
        self.channels.clear()
        if self.presence:
            self.leave_presence(list(self.presence))
        self.hub.leave(self, channels)
        self.hub.forget(self)


class PresenceFeed:
    """A session's presence on one channel: its entry, the diff subscription, the diffs
    held back (``held`` is not None) until the snapshot they follow is queued, and the
    ``seq`` of the last change sent (older diffs are dropped: no change is told twice)."""

    __slots__ = ("cancel", "entry", "held", "seq")

    def __init__(self, entry: PresenceEntry) -> None:
        self.entry = entry
        self.cancel: Callable[[], None] = _nothing
        self.held: list[PresenceDiff] | None = []
        self.seq = 0  # the last change the client has (snapshot or diff)


def _nothing() -> None:
    pass


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
