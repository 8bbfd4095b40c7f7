"""Nothing grows without bound: 10,000 one-off channels, each written once (half with an
idempotency key), leave nothing behind once ``max_age`` has passed: Redis keys under the
test's prefix (``SCAN MATCH prefix*``) and the memory backend's channel count fall back
to zero, by expiry and the periodic sweep alone (no read, no further write)."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from pushsvc.backends import Backend, Message, Retention
from pushsvc.backends.memory import MemoryBackend
from pushsvc.backends.redis import parse_url
from tests.fixtures_redis import MakeBackend, without_query
from tests.waiting import until

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
