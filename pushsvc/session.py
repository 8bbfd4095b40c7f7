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
room in the queue (it is pulled from the log at the pace of the writer).

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
from pushsvc.exceptions import BadRequest
from pushsvc.metrics import Metrics
from pushsvc.protocol import codes
from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.presence import (
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    presence_version,
)
from pushsvc.protocol.resume import ChannelPosition
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


class Session:
    __slots__ = (
        "_drained",
        "_wakeup",
        "bounded_replay",
        "busy",
        "channels",
        "close_code",
        "close_reason",
        "finished",
        "hub",
        "id",
        "last_seen",
        "presence",
        "presence_keep",
        "principal",
        "queue",
        "queued_bytes",
        "scheduled",
        "segments",
        "wire",
        "writer",
    )

    def __init__(self, hub: Registry, principal: Principal, wire: Wire) -> None:
        self.id = next(_ids)
        self.hub = hub
        self.principal = principal
        self.wire = wire
        self.channels: dict[str, ChannelPosition] = {}
        self.segments: dict[str, str] = {}
        self.queue: list[Frame] = []  # a list: an empty deque costs a 600-byte block
        self.queued_bytes = 0
        # created on first use: most sessions never wait for either
        self._wakeup: asyncio.Future[bool] | None = None  # long-poll: waiting for frames
        self._drained: asyncio.Event | None = None  # history replay: room in the queue
        self.writer: Flusher | None = None  # set by WebSocket and SSE transports
        self.scheduled = False  # waiting in the hub's flush list
        self.finished = False  # the writer wrote the close: nothing more goes out
        self.close_code: int | None = None
        self.close_reason = ""
        self.busy = False  # something was queued since the last heartbeat tick
        self.last_seen = time.monotonic()  # last frame from the client (WebSocket)
        # Long-poll: stop replaying history once a batch is pending (nobody drains the
        # queue before the answer is written); the cursor says where to go on.
        self.bounded_replay = False
        # channels whose presence this session joined (created on first use)
        self.presence: dict[str, PresenceFeed] | None = None
        # Long-poll: the entry outlives the request (the next poll renews it); on release
        # it is no longer renewed here and expires unless a poll comes back.
        self.presence_keep = False

    # --- cursor ----------------------------------------------------------------------

    @property
    def cursor(self) -> str:
        return cursor_codec.VERSION + "".join(self.segments.values())

    def _advance(self, channel: str, position: StreamId) -> None:
        self.segments[channel] = cursor_codec.segment(cursor_codec.channel_hash(channel), position)

    # --- subscription and resume -------------------------------------------------------

    async def subscribe(self, channels: list[str], positions: dict[str, StreamId | None]) -> None:
        """Subscribe with resume (DESIGN decision 5): register live first, then replay."""
        new = await self.join(channels, positions)
        await self.catch_up(new, positions)

    async def join(self, channels: list[str], positions: dict[str, StreamId | None]) -> list[str]:
        """Register live on the channels not yet subscribed and seed their positions;
        queue a ``subscribed`` answer (always, even when nothing was new). Returns the new
        channels: ``catch_up`` replays them and lets their live events through."""
        new = [c for c in channels if c not in self.channels]
        limit = self.hub.settings.max_channels_per_session
        if len(self.channels) + len(new) > limit:
            raise BadRequest(f"at most {limit} channels per session")
        for c in new:
            # released buffered events must fit in the queue on top of its high-water mark
            self.channels[c] = ChannelPosition(
                (0, 0), max(1, self.hub.settings.outbound_queue_messages // 2)
            )
        try:
            await self.hub.join(self, new)
            backend = self.hub.backend
            for c in new:
                start = positions.get(c)
                if start is None:
                    # Quiet-channel-safe: seed at the top, read after registering live.
                    start = await backend.top(c)
                self.channels[c].position = start
                self._advance(c, start)
        except BaseException:
            self.unsubscribe(new)  # nothing half-subscribed stays behind
            raise
        self.push(self.wire.subscribed(list(self.channels), self.cursor))
        return new

    async def catch_up(self, new: list[str], positions: dict[str, StreamId | None]) -> None:
        """Replay what the log holds after each new channel's position, then go live."""
        for c in new:
            if self.bounded_replay and self._batch_full():
                break
            await self._catch_up(c)
            if positions.get(c) is not None:
                self.hub.metrics.resumed(self, c)

    async def _catch_up(self, channel: str) -> None:
        page = self.hub.settings.history_page
        pos = self.channels.get(channel)
        while pos is not None and self.close_code is None:
            result = await self.hub.read_after(channel, pos.position, page)
            if self.channels.get(channel) is not pos:
                return  # unsubscribed meanwhile
            if result.gap is not None and result.gap.until > pos.position:
                self._emit_gap(result.gap, pos)
            pos.clamp(result.top)
            high = self.hub.settings.outbound_queue_messages // 2
            for event in result.events:
                # history is pulled at the writer's pace: never overflow our own queue
                if self.bounded_replay and self._batch_full():
                    return
                if len(self.queue) > high:
                    await self._wait_room()
                if self.close_code is not None or self.channels.get(channel) is not pos:
                    return
                if pos.admit(event):
                    self._emit(event)
            if len(result.events) < page:
                released = pos.go_live()
                if released is None:
                    continue  # live buffer overflowed: the log has those events, read on
                for event in released:
                    self._emit(event)
                return

    def on_gap(self, gap: Gap) -> None:
        """The listener lost ``gap``'s events (trimmed during an outage): report the part
        this session had not got past, and go on after it."""
        pos = self.channels.get(gap.channel)
        if pos is None or gap.until <= pos.position:
            return
        self._emit_gap(Gap(gap.channel, pos.position, gap.until), pos)

    def _emit_gap(self, gap: Gap, pos: ChannelPosition) -> None:
        self.hub.metrics.gap(self, gap)
        pos.position = gap.until
        self._advance(gap.channel, gap.until)
        self.push(self.wire.gap(gap, self.cursor))

    def _batch_full(self) -> bool:
        settings = self.hub.settings
        return len(self.queue) >= min(settings.history_page, settings.outbound_queue_messages // 2)

    async def _wait_room(self) -> None:
        high = self.hub.settings.outbound_queue_messages // 2
        while len(self.queue) > high and self.close_code is None:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()

    def unsubscribe(self, channels: list[str]) -> None:
        gone = [c for c in channels if self.channels.pop(c, None) is not None]
        for c in gone:
            self.segments.pop(c, None)
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

    # --- live path (hot) ---------------------------------------------------------------

    def on_live(self, event: Event, frames: dict[type[Wire], Frame] | None = None) -> None:
        """A live event of a subscribed channel. ``frames`` is the hub's per-event memo
        of single-channel frames by wire, shared by all the sessions it dispatches to."""
        pos = self.channels.get(event.channel)
        if pos is None:
            return
        if pos.live:  # ChannelPosition.admit, inlined: this runs per session per event
            if event.id <= pos.position:
                return
            pos.position = event.id
        elif not pos.offer_live(event):
            return
        self._emit(event, frames)

    def _emit(self, event: Event, frames: dict[type[Wire], Frame] | None = None) -> None:
        segments = self.segments
        segments[event.channel] = event.segment
        wire = self.wire
        if len(segments) == 1 or not wire.needs_cursor:
            if frames is None:
                frame = wire.event(event, None)
            else:
                kind = type(wire)
                cached = frames.get(kind)
                if cached is None:
                    cached = frames[kind] = wire.event(event, None)
                frame = cached
        else:
            frame = wire.event(event, self.cursor)
        self.push(frame)

    def push(self, frame: Frame) -> None:
        if self.close_code is not None or not frame:
            return
        queue = self.queue
        size = self.queued_bytes + len(frame)
        settings = self.hub.settings
        if len(queue) >= settings.outbound_queue_messages or size > settings.outbound_queue_bytes:
            self.close(codes.WS_4008_SLOW_CONSUMER, "slow consumer: outbound queue overflowed")
            return
        queue.append(frame)
        self.queued_bytes = size
        self.busy = True
        if not self.scheduled:
            self._notify()

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
        frames = self.queue
        self.queue = []
        self.queued_bytes = 0
        if self._drained is not None:
            self._drained.set()
        return frames

    def close(self, code: int = codes.WS_1000_NORMAL_CLOSURE, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if self._drained is not None:
                self._drained.set()
            self._notify()

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
