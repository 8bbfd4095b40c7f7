"""The Redis backend's command pool: bounded, commands over the limit wait for a free
connection instead of failing, and a wait that times out is a clear 503 problem."""

from __future__ import annotations

import asyncio
import json

import pytest

from pushsvc.backends import Backend, Message, Retention
from pushsvc.backends.redis import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_TIMEOUT,
    RedisBackend,
    parse_pool_options,
)
from pushsvc.exceptions import BackendError, ConfigError
from pushsvc.problems import problem_response
from pushsvc.protocol.ids import ZERO
from tests.fixtures_redis import MakeBackend

redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


def with_query(url: str, query: str) -> str:
    return f"{url}&{query}" if "?" in url else f"{url}?{query}"


def pool_of(backend: Backend) -> tuple[int, int]:
    """(connections open, the pool's limit)."""
    assert isinstance(backend, RedisBackend)
    pool = backend._redis.connection_pool
    return len(pool._in_use_connections) + len(pool._available_connections), pool.max_connections


@redis_only
async def test_300_concurrent_reads_and_appends_all_succeed_on_4_connections(
    make_backend: MakeBackend, backend_url: str
) -> None:
    backend = await make_backend(url=with_query(backend_url, "max_connections=4"))
    channels = [f"c{i}" for i in range(10)]

    async def append(i: int) -> None:
        await backend.append(Message(channels[i % 10], "m", b'{"n":%d}' % i))

    async def read(i: int) -> None:
        await backend.read_after(channels[i % 10], ZERO, 100)
        await backend.top(channels[i % 10])

    jobs = [append(i) if i % 2 else read(i) for i in range(300)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert [r for r in results if r is not None] == []
    opened, limit = pool_of(backend)
    assert limit == 4 and 1 <= opened <= 4
    total = sum([len((await backend.read_after(c, ZERO, 1000)).events) for c in channels])
    assert total == 150


@redis_only
async def test_an_exhausted_pool_is_a_503_problem_with_retry_after(
    make_backend: MakeBackend, backend_url: str
) -> None:
    url = with_query(backend_url, "max_connections=1&pool_timeout=0.2")
    backend = await make_backend(url=url)
    assert isinstance(backend, RedisBackend)
    pool = backend._redis.connection_pool
    # the only connection, held by "someone else"
    try:
        held = await pool.get_connection()
    except TypeError:  # redis-py before 5.1 wants a command name
        held = await pool.get_connection("PING")
    try:
        with pytest.raises(BackendError) as refused:
            async with asyncio.timeout(2):  # one wait of pool_timeout, no retry
                await backend.read_after("c", ZERO, 10)
        with pytest.raises(BackendError):
            await backend.append(Message("c", "m", b"1"))
    finally:
        await pool.release(held)
    response = problem_response(refused.value)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.media_type == "application/problem+json"
    body = json.loads(bytes(response.body))
    assert body["type"].endswith("/backend-unavailable")
    assert "all 1 Redis connections stayed busy for 0.2 s" in body["detail"]
    # and the pool works again once the connection is back
    assert (await backend.append(Message("c", "m", b"2"))).id > ZERO


def test_pool_options_come_from_the_url_with_defaults() -> None:
    url, options = parse_pool_options("redis://h:1/0?max_connections=8&pool_timeout=1.5&db=2")
    assert url == "redis://h:1/0?db=2"
    assert (options.max_connections, options.timeout) == (8, 1.5)
    url, options = parse_pool_options("redis://h:1/0")
    assert url == "redis://h:1/0"
    assert (options.max_connections, options.timeout) == (
        DEFAULT_MAX_CONNECTIONS,
        DEFAULT_POOL_TIMEOUT,
    )
    for bad in ("max_connections=0", "max_connections=x", "pool_timeout=-1", "pool_timeout=inf"):
        with pytest.raises(ConfigError, match="must be a positive"):
            RedisBackend(f"redis://h:1/0?{bad}", Retention())
