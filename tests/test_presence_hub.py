"""The hub keeps this process's presence entries renewed with ONE backend call per
interval, sweeps the channels it listens to (so a crashed instance's members leave), and
hands diffs to local callbacks (pushsvc.hub)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from pushsvc.auth import Principal
from pushsvc.backends.base import Backend, PresenceDiff, PresenceEntry, Retention
from pushsvc.backends.memory import MemoryBackend
from pushsvc.backends.redis import RedisBackend
from pushsvc.hub import Hub
from pushsvc.protocol.wires import PollWire
from pushsvc.session import Session
from pushsvc.settings import Settings
from tests.fixtures_redis import without_query
from tests.waiting import until

TTL = 0.6
INTERVAL = 0.2


def settings(url: str = "memory://") -> Settings:
    return Settings(
        backend_url=url,
        secrets=("s",),
        api_keys=("k",),
        presence_refresh_interval=INTERVAL,
        presence_ttl=TTL,
    )


@pytest.fixture
async def make_hub() -> AsyncIterator[Callable[..., Any]]:
    hubs: list[Hub] = []

    async def make(url: str = "memory://") -> Hub:
        retention = Retention(presence_ttl=TTL)
        backend: Backend = (
            MemoryBackend(retention=retention)
            if url.startswith("memory")
            else RedisBackend(url, retention)
        )
        hub = Hub(backend, settings(url))
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        with contextlib.suppress(Exception):
            await hub.close()


async def listening(hub: Hub, channel: str) -> Session:
    """A session on ``channel``: the hub listens to it from now on."""
    session = Session(hub, Principal("watcher", subscribe=("*",)), PollWire())
    hub.register(session)
    await session.subscribe([channel], {})
    return session


def entry(hub: Hub, subject: str, channel: str = "room") -> PresenceEntry:
    return PresenceEntry(channel, hub.new_conn_id(), subject, b'{"name":"%s"}' % subject.encode())


def crash(hub: Hub) -> None:
    """Stop a hub's timers as ``kill -9`` would, without leaving anything."""
    for task in (hub._heartbeat_task, hub._presence_task):
        assert task is not None
        task.cancel()
    hub._presence.clear()  # its close() must not leave for it either


async def test_the_hub_renews_all_its_entries_with_one_call_per_interval(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub()
    calls: list[int] = []
    refresh = hub.backend.presence_refresh

    async def counted(entries: Any, sweep: Any = ()) -> Any:
        calls.append(len(entries))
        return await refresh(entries, sweep)

    hub.backend.presence_refresh = counted  # type: ignore[method-assign]
    for i in range(40):
        await hub.presence_track(entry(hub, f"user{i}", channel=f"room{i % 4}"))
    assert hub.metrics.presence_entries == 40
    started = time.monotonic()
    await asyncio.sleep(4 * TTL)  # a window in which nothing may expire
    elapsed = time.monotonic() - started
    for i in range(4):
        assert await hub.backend.presence_stats(f"room{i}") == (10, 10)
    assert calls and set(calls) == {40}  # every entry in each call
    assert len(calls) <= elapsed / INTERVAL + 2
    assert b"pushsvc_presence_entries 40.0" in hub.metrics.render()


async def test_the_timer_sweeps_only_channels_whose_presence_is_watched(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub()
    swept: list[list[str]] = []
    refresh = hub.backend.presence_refresh

    async def recorded(entries: Any, sweep: Any = ()) -> Any:
        swept.append(sorted(sweep))
        return await refresh(entries, sweep)

    hub.backend.presence_refresh = recorded  # type: ignore[method-assign]
    await listening(hub, "busy")  # listened to, presence unused: no timer work for it
    await asyncio.sleep(3 * INTERVAL)  # window: no sweep may happen
    assert swept == []
    cancel = hub.on_presence_diff("watched", lambda diff: None)
    await until(lambda: bool(swept))
    assert swept[-1] == ["watched"]
    cancel()
    count = len(swept)
    await asyncio.sleep(3 * INTERVAL)  # window: no further sweep may start
    assert len(swept) <= count + 1  # at most one call already under way


async def test_untracked_entries_leave_and_diffs_reach_the_channel_callbacks(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub()
    await listening(hub, "room")
    got: list[PresenceDiff] = []
    cancel = hub.on_presence_diff("room", got.append)
    other: list[PresenceDiff] = []
    hub.on_presence_diff("hall", other.append)
    tab1, tab2 = entry(hub, "alice"), entry(hub, "alice")
    await hub.presence_track(tab1)
    await hub.presence_track(tab2)
    await hub.presence_untrack("room", tab1.conn_id)
    await hub.presence_untrack("room", tab1.conn_id)  # twice: nothing more
    await hub.presence_untrack("room", tab2.conn_id)
    await until(lambda: len(got) >= 4)
    assert [(d.kind, d.subject, d.connections) for d in got] == [
        ("join", "alice", 1),
        ("join", "alice", 2),
        ("leave", "alice", 1),
        ("leave", "alice", 0),
    ]
    assert hub.metrics.presence_entries == 0 and other == []
    cancel()
    await hub.presence_track(entry(hub, "bob"))
    await asyncio.sleep(0.05)  # window: nothing arrives once unregistered
    assert len(got) == 4


async def test_a_failing_callback_does_not_stop_the_others(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub()
    await listening(hub, "room")

    def broken(diff: PresenceDiff) -> None:
        raise RuntimeError("boom")

    got: list[PresenceDiff] = []
    hub.on_presence_diff("room", broken)
    hub.on_presence_diff("room", got.append)
    await hub.presence_track(entry(hub, "alice"))
    await until(lambda: len(got) == 1)


async def test_closing_a_hub_removes_its_entries(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub()
    await hub.presence_track(entry(hub, "alice"))
    await hub.close()
    assert await hub.backend.presence_stats("room") == (0, 0)


# --- Redis: several instances ------------------------------------------------------------


async def test_members_of_a_crashed_instance_leave_through_another_instances_timer(
    make_hub: Callable[..., Any], redis_url: str
) -> None:
    watcher: Hub = await make_hub(redis_url)
    doomed: Hub = await make_hub(redis_url)
    await listening(watcher, "room")
    got: list[PresenceDiff] = []
    watcher.on_presence_diff("room", got.append)
    await doomed.presence_track(entry(doomed, "xavier"))
    await until(lambda: len(got) == 1)
    crash(doomed)
    await doomed.backend.close()  # its Redis connections drop, as on kill -9
    crashed_at = time.monotonic()
    await until(lambda: len(got) == 2, timeout=TTL + INTERVAL + 2.0)
    # within ttl + one refresh interval of its last renewal (slack for a loaded machine)
    assert time.monotonic() - crashed_at <= TTL + INTERVAL + 0.5
    assert (got[1].kind, got[1].subject, got[1].connections) == ("leave", "xavier", 0)
    assert await watcher.backend.presence_stats("room") == (0, 0)


async def test_entries_the_backend_lost_are_joined_again(
    make_hub: Callable[..., Any], redis_url: str, redis_server_url: str
) -> None:
    hub: Hub = await make_hub(redis_url)
    await listening(hub, "room")
    got: list[PresenceDiff] = []
    hub.on_presence_diff("room", got.append)
    await hub.presence_track(entry(hub, "alice"))
    client = aioredis.Redis.from_url(without_query(redis_server_url))
    try:
        assert isinstance(hub.backend, RedisBackend)
        keys = [k async for k in client.scan_iter(match=f"{hub.backend.prefix}*:p[cem]")]
        assert len(keys) == 3
        await client.delete(*keys)  # as a Redis restart without persistence would
    finally:
        await client.aclose()
    await until(lambda: len(got) == 2, timeout=INTERVAL + 2.0)
    assert got[1].kind == "join" and got[1].subject == "alice"
    assert await hub.backend.presence_stats("room") == (1, 1)
