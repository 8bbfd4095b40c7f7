"""A session's decisions, free of I/O: the resume merge, the queue bounds, the closes.

``SessionCore`` is to ``pushsvc.session.Session`` what websockets' ``Protocol`` is to its
asyncio connection. It is fed events and log pages and read through its outputs:

- in: ``on_live(event)``, ``on_gap(gap)`` (the listener), ``history(...)`` (a page of the
  log that ``replay`` asked for), ``drain()`` (the writer took the queue), ``close()``;
- out: the frames in ``queue``, the ``Replay`` step ``replay()`` answers (``READ`` the log
  after the channel's position, wait for ``ROOM`` in the queue, ``STOP``, or ``LIVE``),
  and ``close_code``/``close_reason`` once a close is decided (``4008`` when the queue
  overflows: live events never wait, the client resumes from its cursor).

It never awaits. Two hooks, no-ops here, let the adapter react without being polled:
``_notify()`` (frames were queued or the session closed, once per ``scheduled`` round)
and ``_gapped(gap)`` (a gap frame was queued: the metrics count it).

The adapter subclasses this class rather than holding one: ``on_live`` → ``push`` runs
per session per event in a fan-out, and a delegating call there would cost every
delivery an extra frame.
"""

from __future__ import annotations

import enum

from pushsvc.exceptions import BadRequest
from pushsvc.protocol import codes
from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.resume import ChannelPosition
from pushsvc.protocol.wires import Frame, Wire


class Replay(enum.Enum):
    """What a replaying channel needs next (``SessionCore.replay``)."""

    READ = "read"  # a page of the log after the channel's position: feed it to history()
    ROOM = "room"  # the queue is above its high-water mark: replay again once drained
    STOP = "stop"  # closed, unsubscribed, or a long-poll batch is full: the cursor says
    LIVE = "live"  # history delivered, buffered live events released: the channel is live


class _Page:
    __slots__ = ("at", "events", "full")

    def __init__(self, events: list[Event], full: bool) -> None:
        self.events = events
        self.at = 0
        self.full = full  # as many as asked: the log may hold more


class SessionCore:
    __slots__ = (
        "_pages",
        "bounded_replay",
        "busy",
        "channels",
        "close_code",
        "close_reason",
        "history_page",
        "max_channels",
        "queue",
        "queue_bytes",
        "queue_messages",
        "queued_bytes",
        "scheduled",
        "segments",
        "wire",
    )

    def __init__(
        self,
        wire: Wire,
        *,
        queue_messages: int,
        queue_bytes: int,
        history_page: int,
        max_channels: int,
    ) -> None:
        self.wire = wire
        self.queue_messages = queue_messages
        self.queue_bytes = queue_bytes
        self.history_page = history_page
        self.max_channels = max_channels
        self.channels: dict[str, ChannelPosition] = {}
        self.segments: dict[str, str] = {}
        self.queue: list[Frame] = []  # a list: an empty deque costs a 600-byte block
        self.queued_bytes = 0
        self.scheduled = False  # _notify() was called and the queue not yet taken
        self.close_code: int | None = None
        self.close_reason = ""
        self.busy = False  # something was queued since the last heartbeat tick
        # Long-poll: stop replaying history once a batch is pending (nobody drains the
        # queue before the answer is written); the cursor says where to go on.
        self.bounded_replay = False
        self._pages: dict[str, _Page] | None = None  # replaying channels' current page

    # --- hooks (the adapter's) ---------------------------------------------------------

    def _notify(self) -> None:
        """Frames were queued or the session closed."""

    def _gapped(self, gap: Gap) -> None:
        """A gap frame was queued."""

    # --- cursor ----------------------------------------------------------------------

    @property
    def cursor(self) -> str:
        return cursor_codec.VERSION + "".join(self.segments.values())

    def _advance(self, channel: str, position: StreamId) -> None:
        self.segments[channel] = cursor_codec.segment(cursor_codec.channel_hash(channel), position)

    # --- channels --------------------------------------------------------------------

    def add_channels(self, channels: list[str]) -> list[str]:
        """Start resuming the channels not yet subscribed (their live events are
        buffered until ``replay`` answers ``LIVE``); returns them."""
        new = [c for c in channels if c not in self.channels]
        if len(self.channels) + len(new) > self.max_channels:
            raise BadRequest(f"at most {self.max_channels} channels per session")
        # released buffered events must fit in the queue on top of its high-water mark
        limit = max(1, self.queue_messages // 2)
        for c in new:
            self.channels[c] = ChannelPosition((0, 0), limit)
        return new

    def seed(self, channel: str, position: StreamId) -> None:
        """Where ``channel`` resumes from (the cursor's position, or the log's top)."""
        self.channels[channel].position = position
        self._advance(channel, position)

    def drop_channels(self, channels: list[str]) -> list[str]:
        """Unsubscribe; returns the channels that were subscribed."""
        gone = [c for c in channels if self.channels.pop(c, None) is not None]
        for c in gone:
            self.segments.pop(c, None)
            if self._pages is not None:
                self._pages.pop(c, None)
        return gone

    # --- resume (DESIGN decision 5) ------------------------------------------------------

    def history(
        self,
        channel: str,
        pos: ChannelPosition,
        events: list[Event],
        gap: Gap | None,
        top: StreamId,
    ) -> None:
        """A page of the log after ``pos.position`` (as ``replay`` asked), with the
        trimmed range before it and the log's top."""
        if self.channels.get(channel) is not pos:
            return  # unsubscribed meanwhile: replay() stops
        if gap is not None and gap.until > pos.position:
            self._emit_gap(gap, pos)
        pos.clamp(top)
        if self._pages is None:
            self._pages = {}
        self._pages[channel] = _Page(events, len(events) >= self.history_page)

    def replay(self, channel: str, pos: ChannelPosition) -> Replay:
        """Deliver what the current page holds, as far as the queue allows; say what
        the channel needs next. History waits for room in the queue (it is pulled from
        the log at the writer's pace); live events never do."""
        pages = self._pages
        page = pages.get(channel) if pages is not None else None
        if self._stopped(channel, pos):
            if page is not None and pages is not None and pages.get(channel) is page:
                del pages[channel]
            return Replay.STOP
        if page is None or pages is None:
            return Replay.READ
        events = page.events
        high = self.queue_messages // 2
        while page.at < len(events):
            if self.bounded_replay and self.batch_full():
                del pages[channel]
                return Replay.STOP
            if len(self.queue) > high:
                return Replay.ROOM
            if self._stopped(channel, pos):  # closed by what this page queued
                del pages[channel]
                return Replay.STOP
            event = events[page.at]
            page.at += 1
            if pos.admit(event):
                self._emit(event)
        del pages[channel]
        if page.full:
            return Replay.READ
        released = pos.go_live()
        if released is None:
            return Replay.READ  # the live buffer overflowed: the log has those events
        for event in released:
            self._emit(event)
        return Replay.LIVE

    def _stopped(self, channel: str, pos: ChannelPosition) -> bool:
        return self.close_code is not None or self.channels.get(channel) is not pos

    def batch_full(self) -> bool:
        """A long-poll batch is as large as one answer gets (``bounded_replay``)."""
        return len(self.queue) >= min(self.history_page, self.queue_messages // 2)

    def room(self) -> bool:
        """Whether the queue is at or below its high-water mark (history may go on)."""
        return len(self.queue) <= self.queue_messages // 2

    def on_gap(self, gap: Gap) -> None:
        """The listener lost ``gap``'s events (trimmed during an outage): report the part
        this session had not got past, and go on after it."""
        pos = self.channels.get(gap.channel)
        if pos is None or gap.until <= pos.position:
            return
        self._emit_gap(Gap(gap.channel, pos.position, gap.until), pos)

    def _emit_gap(self, gap: Gap, pos: ChannelPosition) -> None:
        self._gapped(gap)
        pos.position = gap.until
        self._advance(gap.channel, gap.until)
        self.push(self.wire.gap(gap, self.cursor))

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
        """Queue ``frame``; on overflow (messages or bytes) close as a slow consumer."""
        if self.close_code is not None or not frame:
            return
        queue = self.queue
        size = self.queued_bytes + len(frame)
        if len(queue) >= self.queue_messages or size > self.queue_bytes:
            self.close(codes.WS_4008_SLOW_CONSUMER, "slow consumer: outbound queue overflowed")
            return
        queue.append(frame)
        self.queued_bytes = size
        self.busy = True
        if not self.scheduled:
            self._notify()

    # --- outputs -----------------------------------------------------------------------

    def drain(self) -> list[Frame]:
        """Take the queued frames (the writer writes them)."""
        frames = self.queue
        self.queue = []
        self.queued_bytes = 0
        return frames

    def close(self, code: int = codes.WS_1000_NORMAL_CLOSURE, reason: str = "") -> None:
        """Decide to close (the first decision wins); nothing is queued afterwards."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._notify()
