"""The hub answers log reads near the head from the events it saw live, and keeps a
channel listened for a while after its last session left (pushsvc.hub)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from pushsvc import hub as hub_module
from pushsvc.auth import Principal
from pushsvc.backends.base import ListenerStatus, Message, Retention
from pushsvc.backends.memory import MemoryBackend
from pushsvc.hub import RECENT_EVENTS, Hub
from pushsvc.protocol.events import Gap
from pushsvc.protocol.ids import format_id
from pushsvc.protocol.wires import PollWire
from pushsvc.session import Session
from pushsvc.settings import Settings
from tests.waiting import until

pytestmark = pytest.mark.asyncio


class CountingBackend(MemoryBackend):
    """The memory backend, counting the reads that reach it; ``reconnects`` can be
    bumped to stand for a listener that reconnected."""

    def __init__(self, retention: Retention | None = None) -> None:
        super().__init__(retention=retention)
        self.reads = 0
        self.reconnects = 0

    async def read_after(self, channel: str, after: Any, limit: int) -> Any:
        self.reads += 1
        return await super().read_after(channel, after, limit)

    def listener_status(self) -> ListenerStatus:
        status = super().listener_status()
        return ListenerStatus(status.connected, self.reconnects, status.channels)


async def started_hub(retention: Retention | None = None) -> tuple[Hub, CountingBackend]:
    backend = CountingBackend(retention)
    hub = Hub(backend, Settings(backend_url="memory://"))
    await hub.start()
    return hub, backend


def session(hub: Hub) -> Session:
    s = Session(hub, Principal("t", subscribe=("*",)), PollWire())
    hub.register(s)
    return s


async def publish(backend: CountingBackend, channel: str, n: int) -> list[Any]:
    return [await backend.append(Message(channel, "message", b'{"n":%d}' % i)) for i in range(n)]


async def test_reads_after_a_recent_event_match_the_log_without_a_backend_read() -> None:
    hub, backend = await started_hub()
    try:
        s = session(hub)
        await s.subscribe(["c"], {})
        before = await publish(backend, "c", 5)  # seen live
        # enough that the oldest were forgotten (it keeps RECENT_EVENTS to twice that)
        events = before + await publish(backend, "c", 2 * RECENT_EVENTS + 40)
        backend.reads = 0
        for i, event in enumerate(events[-RECENT_EVENTS:-1]):
            got = await hub.read_after("c", event.id, 50)
            want = await MemoryBackend.read_after(backend, "c", event.id, 50)
            assert [e.id for e in got.events] == [e.id for e in want.events], i
            assert got.gap is None
        assert backend.reads == 0
        # older than what is remembered, or not an event ID: the backend answers
        for after in (events[0].id, (0, 0), (events[-1].id[0], events[-1].id[1] + 1)):
            got = await hub.read_after("c", after, 50)
            want = await MemoryBackend.read_after(backend, "c", after, 50)
            assert [e.id for e in got.events] == [e.id for e in want.events]
        assert backend.reads == 3
    finally:
        await hub.close()


async def test_events_retention_may_have_trimmed_are_read_from_the_log() -> None:
    """With a short log, the events after a remembered one may be gone: the backend
    answers, with the gap."""
    hub, backend = await started_hub(Retention(max_len=5, approximate=False))
    try:
        s = session(hub)
        await s.subscribe(["c"], {})
        events = await publish(backend, "c", 20)
        backend.reads = 0
        got = await hub.read_after("c", events[2].id, 50)
        assert backend.reads == 1
        assert got.gap is not None
        assert [e.id for e in got.events] == [e.id for e in events[-5:]]
    finally:
        await hub.close()


async def test_a_reconnected_listener_discards_what_it_remembered() -> None:
    hub, backend = await started_hub()
    try:
        s = session(hub)
        await s.subscribe(["c"], {})
        events = await publish(backend, "c", 10)
        backend.reads = 0
        await hub.read_after("c", events[3].id, 10)
        assert backend.reads == 0
        backend.reconnects += 1  # what was seen before may have a hole now
        got = await hub.read_after("c", events[3].id, 10)
        assert backend.reads == 1
        assert [e.id for e in got.events] == [e.id for e in events[4:]]
        # events seen live after that are remembered again
        newer = await publish(backend, "c", 3)
        await hub.read_after("c", newer[0].id, 10)
        assert backend.reads == 1
    finally:
        await hub.close()


async def test_a_channel_stays_listened_for_a_while_after_its_last_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "LISTEN_LINGER", 0.3)
    hub, backend = await started_hub()
    try:
        for _ in range(5):  # long-poll style: join, leave, join again
            s = session(hub)
            await s.subscribe(["c"], {})
            s.release()
            assert backend.listener_status().channels == 1
        await asyncio.sleep(0.1)  # window: the linger keeps the channel listened
        assert backend.listener_status().channels == 1
        await until(
            lambda: backend.listener_status().channels,
            3,
            "the channel unlistened after the linger",
            check=lambda channels: channels == 0,
            interval=0.05,
        )
        assert backend.listener_status().channels == 0
        assert "c" not in hub._recent
    finally:
        await hub.close()


async def test_the_confirmed_top_of_a_quiet_channel_is_answered_from_memory() -> None:
    """Idle long-polls carry the top their first poll found, not an event ID."""
    hub, backend = await started_hub()
    try:
        old = await publish(backend, "c", 3)  # before anyone listened
        s = session(hub)
        backend.reads = 0
        await s.subscribe(["c"], {})  # seeds at the top, whose read confirms it
        assert backend.reads == 1
        top = old[-1].id
        again = await hub.read_after("c", top, 10)
        assert again.events == [] and backend.reads == 1
        new = await publish(backend, "c", 4)
        got = await hub.read_after("c", top, 10)
        assert [e.id for e in got.events] == [e.id for e in new]
        assert backend.reads == 1
        # an older position is not known here
        await hub.read_after("c", old[0].id, 10)
        assert backend.reads == 2
    finally:
        await hub.close()


async def test_a_listener_gap_reaches_every_session_that_had_not_got_past_it() -> None:
    hub, backend = await started_hub()
    try:
        s = session(hub)
        await s.subscribe(["c"], {})
        events = await publish(backend, "c", 2)
        assert len(s.drain()) == 2
        assert hub._recent["c"].ids
        cursor = s.cursor
        # the listener reports two events it lost (trimmed during an outage)
        until = (events[1].id[0], events[1].id[1] + 2)
        hub._dispatch_gap(Gap("c", events[1].id, until))
        frames = s.drain()
        assert [json.loads(f) for f in frames] == [
            {
                "type": "gap",
                "channel": "c",
                "after": format_id(events[1].id),
                "until": format_id(until),
            }
        ]
        assert s.channels["c"].position == until and s.cursor != cursor
        assert not hub._recent["c"].ids  # what it remembered is no longer contiguous
        hub._dispatch_gap(Gap("c", events[0].id, until))  # already past it: nothing more
        assert s.drain() == []
    finally:
        await hub.close()
