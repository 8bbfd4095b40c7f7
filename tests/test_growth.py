"""Nothing grows without bound: 10,000 one-off channels, each written once (half with an
idempotency key), leave nothing behind once ``max_age`` has passed: Redis keys under the
test's prefix (``SCAN MATCH prefix*``) and the memory backend's channel count fall back
to zero, by expiry and the periodic sweep alone (no read, no further write). A client
whose cursor points into a channel that expired gets a gap, then the channel's new
events."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from pushsvc.backends import Backend, Message, Retention
from pushsvc.backends.memory import MemoryBackend
from pushsvc.backends.redis import parse_url
from pushsvc.protocol import cursor
from pushsvc.protocol.ids import parse_id
from tests.fixtures_redis import MakeBackend, without_query
from tests.fixtures_server import Server
from tests.waiting import until
from tests.wire import poll_once

CHANNELS = 10_000
BATCH = 500
RETENTION = Retention(max_age=1.0, idempotency_ttl=1.0)


async def publish_one_off(backend: Backend) -> None:
    for start in range(0, CHANNELS, BATCH):
        await backend.append_many(
            [
                Message(
                    f"once-{i}", "m", b'{"n":%d}' % i, idempotency_key=f"k{i}" if i % 2 else None
                )
                for i in range(start, start + BATCH)
            ]
        )


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
async def test_one_off_channels_leave_no_redis_keys_behind(
    make_backend: MakeBackend, redis_url: str
) -> None:
    backend = await make_backend(RETENTION, redis_url)
    _, prefix = parse_url(redis_url)
    r = aioredis.from_url(without_query(redis_url))

    async def keys() -> int:
        return sum([1 async for _ in r.scan_iter(match=prefix + "*", count=1000)])

    try:
        started = time.monotonic()
        await publish_one_off(backend)
        # a stream per channel, and the idempotency buckets of half of them (unless this
        # machine took longer than max_age + margin to write them: some expired already)
        assert await keys() >= CHANNELS or time.monotonic() - started > 2.0
        await until(keys, 30, "the keys to expire", check=lambda n: n == 0, interval=0.2)
        assert time.monotonic() - started < 30
        # and a channel written again starts afresh
        await backend.append(Message("once-1", "m", b"{}", idempotency_key="k1"))
        assert await keys() == 2
    finally:
        await r.aclose()


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_one_off_channels_are_swept_from_the_memory_backend(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend(RETENTION)
    assert isinstance(backend, MemoryBackend)
    started = time.monotonic()
    await publish_one_off(backend)
    # every channel held, unless this machine took longer than max_age + margin
    assert backend.channel_count == CHANNELS or time.monotonic() - started > 2.0
    await until(
        lambda: backend.channel_count,
        30,
        "the periodic sweep to evict every channel",
        check=lambda n: n == 0,
        interval=0.1,
    )


async def test_a_cursor_into_an_expired_channel_gets_a_gap_then_new_events(
    server_factory: Any,
) -> None:
    server: Server = server_factory(retention_max_age=0.2)
    token = server.token()
    ids = [server.publish("x", i) for i in range(3)]
    seen_first = cursor.encode({"x": parse_id(ids[0])})  # a client that saw only ids[0]

    def history() -> Any:
        return httpx.get(
            server.url + "/v1/channels/x/history",
            params={"after": "0-0"},
            headers=server.api_headers,
        ).json()["events"]

    await until(history, 15, "the channel to expire", check=lambda events: events == [])
    answer = await poll_once(server.url, ["x"], token, cursor=seen_first, timeout=0)
    gap, *rest = answer["events"]
    assert (gap["type"], gap["channel"], rest) == ("gap", "x", [])
    assert parse_id(gap["until"]) > parse_id(ids[-1])  # covers what the client missed
    new = server.publish("x", 3)
    answer = await poll_once(server.url, ["x"], token, cursor=answer["cursor"], timeout=5)
    assert [e["id"] for e in answer["events"]] == [new]
