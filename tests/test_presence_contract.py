"""The presence contract (``pushsvc.backends.base``), ONE suite run against ``memory://``
and a real ``redis://``. Two RedisBackend objects on one Redis are two instances; the
memory backend is one process, so its "other instance" is the same object."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from pushsvc.backends import Backend, Message, Retention
from pushsvc.backends.base import PresenceDiff, PresenceEntry
from pushsvc.backends.redis import RedisBackend
from pushsvc.protocol.events import Event
from tests.fixtures_redis import MakeBackend, backend_url_for, without_query
from tests.waiting import until

redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """Presence holds on a Redis Cluster too (its keys share the channel's slot)."""
    return backend_url_for(request)


TTL = 0.6
INTERVAL = 0.2
SHORT = Retention(presence_ttl=TTL)


class Diffs:
    """A presence sink that records diffs."""

    def __init__(self, backend: Backend) -> None:
        self.diffs: list[PresenceDiff] = []
        backend.set_presence_sink(self.diffs.append)

    def seen(self) -> list[tuple[str, str, int]]:
        return [(d.kind, d.subject, d.connections) for d in self.diffs]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        await until(
            self.seen, timeout, "presence diffs", check=lambda _: predicate(), interval=0.005
        )


def entry(conn: str, subject: str, channel: str = "room", info: bytes = b"{}") -> PresenceEntry:
    return PresenceEntry(channel, conn, subject, info)


async def two_instances(
    make_backend: MakeBackend, backend_url: str, retention: Retention | None = None
) -> tuple[Backend, Backend]:
    first = await make_backend(retention)
    if backend_url.startswith("memory"):
        return first, first  # one process: the "other instance" is itself
    return first, await make_backend(retention)


async def test_a_joined_connection_shows_in_snapshot_and_stats(backend: Backend) -> None:
    assert await backend.presence_stats("room") == (0, 0)
    await backend.presence_join(entry("c1", "alice", info=b'{"name":"Alice"}'))
    snap = await backend.presence_snapshot("room", 100)
    assert snap.members == [("alice", b'{"name":"Alice"}', 1)]
    assert (snap.member_count, snap.connection_count, snap.truncated) == (1, 1, False)
    assert await backend.presence_stats("room") == (1, 1)
    assert await backend.presence_stats("elsewhere") == (0, 0)


async def test_connections_of_one_subject_are_one_member_that_leaves_at_the_last(
    backend: Backend,
) -> None:
    diffs = Diffs(backend)
    await backend.listen("room")
    await backend.presence_join(entry("a1", "alice"))
    await backend.presence_join(entry("a2", "alice", info=b'{"tab":2}'))
    await backend.presence_join(entry("b1", "bob"))
    snap = await backend.presence_snapshot("room", 100)
    assert snap.members == [("alice", b'{"tab":2}', 2), ("bob", b"{}", 1)]
    assert await backend.presence_stats("room") == (2, 3)

    await backend.presence_leave("room", "a1")
    assert (await backend.presence_snapshot("room", 100)).members[0][::2] == ("alice", 1)
    await backend.presence_leave("room", "a2")
    snap = await backend.presence_snapshot("room", 100)
    assert snap.members == [("bob", b"{}", 1)]
    assert await backend.presence_stats("room") == (1, 1)

    await diffs.wait_for(lambda: len(diffs.diffs) >= 5)
    assert diffs.seen() == [
        ("join", "alice", 1),
        ("join", "alice", 2),
        ("join", "bob", 1),
        ("leave", "alice", 1),
        ("leave", "alice", 0),
    ]
    # each diff carries the info of the connection that joined or left
    assert [d.info for d in diffs.diffs] == [b"{}", b'{"tab":2}', b"{}", b"{}", b'{"tab":2}']


async def test_joining_a_present_connection_again_and_leaving_an_unknown_one_change_nothing(
    backend: Backend,
) -> None:
    diffs = Diffs(backend)
    await backend.listen("room")
    await backend.presence_join(entry("c1", "alice"))
    await backend.presence_join(entry("c1", "alice"))
    await backend.presence_leave("room", "nobody")
    await backend.presence_leave("other", "c1")
    assert await backend.presence_stats("room") == (1, 1)
    await backend.presence_leave("room", "c1")
    await backend.presence_leave("room", "c1")
    await diffs.wait_for(lambda: len(diffs.diffs) >= 2)
    await asyncio.sleep(0.1)  # window: nothing more may arrive
    assert diffs.seen() == [("join", "alice", 1), ("leave", "alice", 0)]


async def test_diffs_reach_every_instance_that_listens(
    make_backend: MakeBackend, backend_url: str
) -> None:
    one, other = await two_instances(make_backend, backend_url)
    seen_by_other = Diffs(other)
    await other.listen("room")
    await one.presence_join(entry("c1", "ålice ✓", info='{"n":"Ålice"}'.encode()))
    await one.presence_leave("room", "c1")
    await seen_by_other.wait_for(lambda: len(seen_by_other.diffs) == 2)
    join, leave = seen_by_other.diffs
    info = '{"n":"Ålice"}'.encode()
    assert join == PresenceDiff("room", "join", "ålice ✓", info, 1, join.seq)
    assert leave == PresenceDiff("room", "leave", "ålice ✓", info, 0, leave.seq)
    assert 0 < join.seq < leave.seq


async def test_seq_orders_a_channels_changes_and_a_snapshot_names_the_last_it_holds(
    backend: Backend,
) -> None:
    """What lets a subscriber drop the diffs its snapshot already holds: every change of
    a channel has a greater ``seq`` than the ones before it, also after the channel was
    emptied, and a snapshot's ``seq`` is that of the last change it includes."""
    diffs = Diffs(backend)
    await backend.listen("room")
    await backend.presence_join(entry("c1", "alice"))
    await backend.presence_join(entry("c2", "bob"))
    await diffs.wait_for(lambda: len(diffs.diffs) == 2)
    snap = await backend.presence_snapshot("room", 10)
    await backend.presence_leave("room", "c1")
    await backend.presence_leave("room", "c2")  # emptied: its keys are gone
    await backend.presence_join(entry("c3", "carol"))
    await diffs.wait_for(lambda: len(diffs.diffs) == 5)
    seqs = [d.seq for d in diffs.diffs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5, seqs
    assert snap.seq == seqs[1]  # includes both joins, none of what followed


async def test_diffs_of_channels_not_listened_to_are_not_delivered(backend: Backend) -> None:
    diffs = Diffs(backend)
    await backend.listen("room")
    await backend.presence_join(entry("c1", "alice", channel="quiet"))
    await backend.presence_join(entry("c2", "bob"))
    await diffs.wait_for(lambda: len(diffs.diffs) >= 1)
    await asyncio.sleep(0.1)  # window: a diff of the channel not listened to would arrive now
    assert [(d.channel, d.subject) for d in diffs.diffs] == [("room", "bob")]


async def test_presence_diffs_and_events_share_the_listener_without_mixing(
    backend: Backend,
) -> None:
    events: list[Event] = []
    backend.set_sink(events.append)
    diffs = Diffs(backend)
    await backend.listen("room")
    sent = []
    for i in range(5):
        await backend.presence_join(entry(f"c{i}", f"user{i}"))
        sent.append(await backend.append(Message("room", "message", b'{"n":%d}' % i)))
    await diffs.wait_for(lambda: len(events) == 5 and len(diffs.diffs) == 5)
    assert [e.id for e in events] == [e.id for e in sent]
    assert [d.subject for d in diffs.diffs] == [f"user{i}" for i in range(5)]


@pytest.mark.parametrize("backend", [SHORT], indirect=True)
async def test_refresh_keeps_entries_alive_past_the_ttl(backend: Backend) -> None:
    mine = [entry("c1", "alice"), entry("c2", "bob", channel="hall")]
    for e in mine:
        await backend.presence_join(e)
    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:  # a window in which nothing may expire
        assert await backend.presence_refresh(mine) == []
        await asyncio.sleep(INTERVAL)  # pace: the refresh timer's tick
    assert await backend.presence_stats("room") == (1, 1)
    assert await backend.presence_stats("hall") == (1, 1)


async def test_entries_of_an_instance_that_stops_refreshing_leave_within_ttl_plus_interval(
    make_backend: MakeBackend, backend_url: str
) -> None:
    survivor, crashed = await two_instances(make_backend, backend_url, SHORT)
    diffs = Diffs(survivor)
    await survivor.listen("room")
    mine = entry("s1", "sam")
    await survivor.presence_join(mine)
    await crashed.presence_join(entry("x1", "xavier"))
    await crashed.presence_join(entry("x2", "xavier", channel="unwatched"))
    joined_at = time.monotonic()
    if crashed is not survivor:
        await crashed.close()  # gone without leaving: nothing renews its entries

    async def refresh_timer() -> None:
        while True:
            await survivor.presence_refresh([mine], sweep=["room"])
            await asyncio.sleep(INTERVAL)  # pace: the refresh timer's tick

    timer = asyncio.create_task(refresh_timer())
    try:
        left = ("leave", "xavier", 0)
        await diffs.wait_for(lambda: left in diffs.seen(), timeout=TTL + INTERVAL + 2.0)
        elapsed = time.monotonic() - joined_at
        # the bound, with slack for a loaded test machine
        assert TTL - 0.05 <= elapsed <= TTL + INTERVAL + 0.5, elapsed
        snap = await survivor.presence_snapshot("room", 100)
        assert snap.members == [("sam", b"{}", 1)]
        assert ("leave", "sam", 0) not in diffs.seen()
        # a channel nobody renews or watches: swept by the next call on it
        assert await survivor.presence_stats("unwatched") == (0, 0)
    finally:
        timer.cancel()


@pytest.mark.parametrize("backend", [SHORT], indirect=True)
async def test_refresh_answers_the_entries_it_no_longer_holds(backend: Backend) -> None:
    gone = entry("c1", "alice")
    await backend.presence_join(gone)
    await until(
        lambda: backend.presence_stats("room"),
        TTL + 2.0,
        "the expired entry swept",
        check=lambda stats: stats == (0, 0),
        interval=0.05,
    )
    never = entry("c9", "nobody", channel="hall")
    held = entry("c2", "bob")
    await backend.presence_join(held)
    assert await backend.presence_refresh([gone, held, never]) == [gone, never]
    assert await backend.presence_stats("room") == (1, 1)  # not added back
    await backend.presence_join_many([gone, never])
    assert await backend.presence_stats("room") == (2, 2)
    assert await backend.presence_stats("hall") == (1, 1)


async def test_snapshot_over_the_limit_answers_counts_only(backend: Backend) -> None:
    for i in range(5):
        await backend.presence_join(entry(f"c{i}", f"user{i % 3}"))
    full = await backend.presence_snapshot("room", 3)
    assert not full.truncated and [m[0] for m in full.members] == ["user0", "user1", "user2"]
    assert [m[2] for m in full.members] == [2, 2, 1]
    cut = await backend.presence_snapshot("room", 2)
    assert (cut.members, cut.member_count, cut.connection_count, cut.truncated) == (
        [],
        3,
        5,
        True,
    )
    assert (await backend.presence_snapshot("room", 0)).truncated


async def test_stats_match_the_snapshot_counts(backend: Backend) -> None:
    for i in range(12):
        await backend.presence_join(entry(f"c{i}", f"user{i % 5}"))
    for i in (0, 5, 7):
        await backend.presence_leave("room", f"c{i}")
    snap = await backend.presence_snapshot("room", 100)
    assert snap.member_count == len(snap.members)
    assert snap.connection_count == sum(m[2] for m in snap.members) == 9
    assert await backend.presence_stats("room") == (snap.member_count, snap.connection_count)


async def test_presence_of_an_emptied_channel_is_dropped(backend: Backend) -> None:
    await backend.presence_join(entry("c1", "alice"))
    await backend.presence_leave("room", "c1")
    assert await backend.presence_stats("room") == (0, 0)
    if not isinstance(backend, RedisBackend):
        assert backend._presence == {}  # type: ignore[attr-defined]


# --- Redis: keys -----------------------------------------------------------------------


async def presence_keys(client: aioredis.Redis, backend: RedisBackend) -> list[bytes]:
    return [k async for k in client.scan_iter(match=f"{backend.prefix}*:p[cem]")]


@redis_only
@pytest.mark.parametrize("backend", [SHORT], indirect=True)
async def test_presence_keys_carry_a_ttl_and_vanish_when_everyone_left(
    backend: Backend, redis_server_url: str
) -> None:
    assert isinstance(backend, RedisBackend)
    client = aioredis.Redis.from_url(without_query(redis_server_url))
    try:
        await backend.presence_join(entry("c1", "alice"))
        await backend.presence_join(entry("c2", "bob", channel="hall"))
        await backend.presence_refresh([entry("c1", "alice")], sweep=["room", "empty"])
        keys = await presence_keys(client, backend)
        assert len(keys) == 6  # three per channel; none for the channel only swept
        for key in keys:
            assert b"{room}" in key or b"{hall}" in key
            assert 0 < await client.pttl(key) <= TTL * 1000, key
        await backend.presence_leave("room", "c1")
        assert all(b"{hall}" in k for k in await presence_keys(client, backend))
        # hall is abandoned (a crashed owner): its keys expire by themselves
        await until(
            lambda: presence_keys(client, backend),
            TTL + 2.0,
            "the abandoned channel's keys to expire",
            check=lambda keys: not keys,
            interval=0.05,
        )
    finally:
        await client.aclose()
