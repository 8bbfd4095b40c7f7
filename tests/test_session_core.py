"""The session core without a server: any interleaving of live events, history pages,
trims, listener gaps and writer drains delivers each event once, in order, and reports
every trimmed range it skips with a gap (DESIGN decision 5).

The model holds a log per channel (IDs ``(n, 0)``, trimmed from the front), a listener
that hands events to the core late (``pending``), and the reads the core asks for
(``Replay.READ``), answered from the log as it is when the rule runs."""

from __future__ import annotations

import bisect

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pushsvc.protocol import codes
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.presence import PresenceDiff, PresenceSnapshot
from pushsvc.protocol.session import Replay, SessionCore
from pushsvc.protocol.wires import Frame, Wire

CHANNELS = ("a", "b")
ZERO: StreamId = (0, 0)


class RecordingWire(Wire):
    """Frames a test can read back: ``E channel n``, ``G channel after until``."""

    name = "test"
    heartbeat = ""

    def event(self, event: Event, cursor: str | None) -> Frame:
        return f"E {event.channel} {event.id[0]}"

    def gap(self, gap: Gap, cursor: str) -> Frame:
        return f"G {gap.channel} {gap.after[0]} {gap.until[0]}"

    def subscribed(self, channels: list[str], cursor: str) -> Frame:
        return "S"

    def control(self, kind: str, cursor: str | None = None, **fields: object) -> Frame:
        return ""

    def presence(self, channel: str, snapshot: PresenceSnapshot) -> Frame:
        return ""

    def presence_diff(self, diff: PresenceDiff) -> Frame:
        return ""


class SessionCoreMachine(RuleBasedStateMachine):
    @initialize(
        queue=st.sampled_from([4, 8, 1000]),
        page=st.integers(1, 4),
        before=st.lists(st.sampled_from(CHANNELS), max_size=8),
        starts=st.fixed_dictionaries({c: st.integers(-1, 8) for c in CHANNELS}),
        trim=st.fixed_dictionaries({c: st.integers(0, 4) for c in CHANNELS}),
    )
    def subscribe(
        self,
        queue: int,
        page: int,
        before: list[str],
        starts: dict[str, int],
        trim: dict[str, int],
    ) -> None:
        self.next_id = 1
        self.log: dict[str, list[Event]] = {c: [] for c in CHANNELS}
        self.published: dict[str, list[int]] = {c: [] for c in CHANNELS}
        self.trimmed: dict[str, StreamId] = {c: ZERO for c in CHANNELS}
        self.pending: dict[str, list[Event]] = {c: [] for c in CHANNELS}
        self.dispatched: dict[str, StreamId] = {c: ZERO for c in CHANNELS}
        self.listening = False
        for c in before:
            self._append(c)
        for c, n in trim.items():
            self._trim(c, n)
        self.page = page
        self.core = SessionCore(
            RecordingWire(),
            queue_messages=queue,
            queue_bytes=1 << 20,
            history_page=page,
            max_channels=len(CHANNELS),
        )
        new = self.core.add_channels(list(CHANNELS))
        assert new == list(CHANNELS)
        self.listening = True  # registered live before the positions are read
        self.start: dict[str, int] = {}
        for c in CHANNELS:
            # a cursor position among the published IDs (possibly trimmed), or the top
            n = starts[c]
            ids = self.published[c]
            position = (ids[n], 0) if 0 <= n < len(ids) else ZERO if n == -1 else self._top(c)
            self.core.seed(c, position)
            self.start[c] = position[0]
        self.step = {c: Replay.READ for c in CHANNELS}
        self.received: list[str] = []

    # --- the log and the listener --------------------------------------------------------

    def _append(self, channel: str) -> None:
        event = Event(channel, (self.next_id, 0), "m", b"1")
        self.next_id += 1
        self.log[channel].append(event)
        self.published[channel].append(event.id[0])
        if self.listening:
            self.pending[channel].append(event)

    def _trim(self, channel: str, n: int) -> None:
        log = self.log[channel]
        for _ in range(min(n, len(log))):
            self.trimmed[channel] = log.pop(0).id

    def _top(self, channel: str) -> StreamId:
        ids = self.published[channel]
        return (ids[-1], 0) if ids else ZERO

    @rule(channel=st.sampled_from(CHANNELS), n=st.integers(1, 3))
    def publish(self, channel: str, n: int) -> None:
        for _ in range(n):
            self._append(channel)

    @rule(channel=st.sampled_from(CHANNELS), n=st.integers(1, 3))
    def trim(self, channel: str, n: int) -> None:
        self._trim(channel, n)

    @precondition(lambda self: any(self.pending.values()))
    @rule(channel=st.sampled_from(CHANNELS), n=st.integers(1, 3))
    def deliver_live(self, channel: str, n: int) -> None:
        """The listener hands on the next live events (the hub's ``_dispatch``)."""
        for _ in range(n):
            if self.pending[channel]:
                event = self.pending[channel].pop(0)
                self.dispatched[channel] = event.id
                self.core.on_live(event)

    @rule(channel=st.sampled_from(CHANNELS))
    def listener_gap(self, channel: str) -> None:
        """The listener was away: the events trimmed meanwhile are reported as a gap."""
        pending = self.pending[channel]
        lost = [e for e in pending if e.id <= self.trimmed[channel]]
        if lost:
            del pending[: len(lost)]
            self.core.on_gap(Gap(channel, self.dispatched[channel], lost[-1].id))
            self.dispatched[channel] = lost[-1].id

    # --- the adapter's side: replay steps, reads, drains ------------------------------------

    def _replay(self, channel: str) -> None:
        pos = self.core.channels[channel]
        self.step[channel] = self.core.replay(channel, pos)

    @precondition(lambda self: any(s is Replay.READ for s in self.step.values()))
    @rule(channel=st.sampled_from(CHANNELS))
    def read_page(self, channel: str) -> None:
        """Answer the read the core asked for from the log as it is now."""
        if self.step[channel] is not Replay.READ:
            return
        pos = self.core.channels[channel]
        log = self.log[channel]
        gap = None
        if self.trimmed[channel] > pos.position:
            gap = Gap(channel, pos.position, self.trimmed[channel])
        start = bisect.bisect_right([e.id for e in log], pos.position)
        self.core.history(channel, pos, log[start : start + self.page], gap, self._top(channel))
        self._replay(channel)

    @precondition(lambda self: any(s is Replay.ROOM for s in self.step.values()))
    @rule(channel=st.sampled_from(CHANNELS))
    def room(self, channel: str) -> None:
        if self.step[channel] is Replay.ROOM and self.core.room():
            self._replay(channel)

    @rule()
    def drain(self) -> None:
        self.received += self.core.drain()

    @rule()
    def settle(self) -> None:
        """Let everything through; then each channel is delivered up to its top."""
        for _ in range(10_000):
            self.received += self.core.drain()
            for c in CHANNELS:
                while self.pending[c]:
                    self.deliver_live(c, 1)
                    self.received += self.core.drain()
                if self.step[c] is Replay.READ:
                    self.read_page(c)
                elif self.step[c] is Replay.ROOM:
                    self.room(c)
            if all(s in (Replay.LIVE, Replay.STOP) for s in self.step.values()):
                break
        self.received += self.core.drain()
        if self.core.close_code is not None:
            assert self.core.close_code == codes.WS_4008_SLOW_CONSUMER
            return
        assert all(s is Replay.LIVE for s in self.step.values())
        reached = self._positions()
        for c in CHANNELS:
            assert reached[c] == max(self.start[c], self._top(c)[0]), (c, reached, self.start)

    # --- what the client got ---------------------------------------------------------------

    def _positions(self) -> dict[str, int]:
        """Check the frames so far and answer each channel's position after them."""
        at = dict(self.start)
        for frame in self.received + list(self.core.queue):
            kind, *rest = str(frame).split()
            if kind == "E":
                c, n = rest[0], int(rest[1])
                assert n > at[c], f"{c}: event {n} after {at[c]} (duplicate or reordered)"
                skipped = [i for i in self.published[c] if at[c] < i < n]
                assert not skipped, f"{c}: events {skipped} lost silently before {n}"
                at[c] = n
            elif kind == "G":
                c, after, until = rest[0], int(rest[1]), int(rest[2])
                assert after == at[c], f"{c}: gap from {after}, the client is at {at[c]}"
                assert until > after
                assert until <= self.trimmed[c][0], f"{c}: gap over events still in the log"
                at[c] = until
        return at

    @invariant()
    def each_event_once_in_order_and_no_silent_loss(self) -> None:
        self._positions()

    @invariant()
    def the_queue_stays_bounded(self) -> None:
        assert len(self.core.queue) <= self.core.queue_messages


SessionCoreMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_session_core_delivers_each_event_once_in_order = SessionCoreMachine.TestCase


def _core(queue: int = 8, page: int = 2) -> SessionCore:
    return SessionCore(
        RecordingWire(),
        queue_messages=queue,
        queue_bytes=1 << 20,
        history_page=page,
        max_channels=2,
    )


def test_a_resume_past_the_trimmed_log_sends_a_gap_then_the_retained_events() -> None:
    core = _core()
    (c,) = core.add_channels(["a"])
    core.seed(c, (1, 0))
    pos = core.channels[c]
    assert core.replay(c, pos) is Replay.READ
    events = [Event(c, (5, 0), "m", b"1")]
    core.history(c, pos, events, Gap(c, (1, 0), (4, 0)), (5, 0))
    assert core.replay(c, pos) is Replay.LIVE
    assert core.drain() == ["G a 1 4", "E a 5"]


def test_history_waits_for_room_but_live_events_overflow_the_queue() -> None:
    core = _core(queue=4, page=10)
    (c,) = core.add_channels(["a"])
    core.seed(c, ZERO)
    pos = core.channels[c]
    core.history(c, pos, [Event(c, (i, 0), "m", b"1") for i in range(1, 6)], None, (5, 0))
    assert core.replay(c, pos) is Replay.ROOM  # above the high-water mark (2)
    assert len(core.drain()) == 3
    assert core.replay(c, pos) is Replay.LIVE
    for i in range(6, 12):
        core.on_live(Event(c, (i, 0), "m", b"1"))
    assert core.close_code == codes.WS_4008_SLOW_CONSUMER


def test_a_live_buffer_that_overflowed_is_read_from_the_log_again() -> None:
    core = _core(queue=4, page=10)  # live buffer: 2 events
    (c,) = core.add_channels(["a"])
    core.seed(c, ZERO)
    pos = core.channels[c]
    for i in range(1, 5):
        core.on_live(Event(c, (i, 0), "m", b"1"))
    core.history(c, pos, [], None, (4, 0))  # read before the events were stored
    assert core.replay(c, pos) is Replay.READ  # the buffer dropped them: read again
    core.history(c, pos, [Event(c, (i, 0), "m", b"1") for i in range(1, 5)], None, (4, 0))
    steps = [core.replay(c, pos)]
    while steps[-1] is Replay.ROOM:
        core.queue.clear()
        steps.append(core.replay(c, pos))
    assert steps[-1] is Replay.LIVE


@pytest.mark.parametrize("closing", [True, False])
def test_replay_stops_once_closed_or_unsubscribed(closing: bool) -> None:
    core = _core()
    (c,) = core.add_channels(["a"])
    core.seed(c, ZERO)
    pos = core.channels[c]
    if closing:
        core.close(codes.WS_1001_GOING_AWAY, "bye")
    else:
        core.drop_channels([c])
    core.history(c, pos, [Event(c, (1, 0), "m", b"1")], None, (1, 0))
    assert core.replay(c, pos) is Replay.STOP
    assert core.drain() == []
