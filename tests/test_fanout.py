"""Fan-out per process: Redis work per publish does not grow with subscribers, and the
single listener is gap-free across a killed Redis connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
import websockets

from tests.fixtures_server import Server
from tests.waiting import until
from tests.wire import poll_once

pytestmark = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


def plain_redis(url: str) -> aioredis.Redis:
    parts = urlsplit(url)
    return aioredis.from_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


async def command_calls(r: aioredis.Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


class Subscribers:
    """N WebSocket subscribers on one channel, counting what each receives."""

    def __init__(self, server: Server, channel: str, n: int) -> None:
        self.server, self.channel, self.n = server, channel, n
        self.received: list[list[str]] = [[] for _ in range(n)]
        self.sockets: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Subscribers:
        token = self.server.token()
        for i in range(self.n):
            ws = await websockets.connect(f"{self.server.ws_url}/v1/ws?token={token}")
            await ws.send(json.dumps({"type": "subscribe", "channels": [self.channel]}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            self.sockets.append(ws)
            self.tasks.append(asyncio.create_task(self._read(ws, self.received[i])))
        return self

    async def _read(self, ws: Any, into: list[str]) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "event":
                into.append(frame["id"])

    async def wait_for(self, count: int, timeout: float = 20) -> None:
        await until(
            lambda: min(len(r) for r in self.received),
            timeout,
            f"every subscriber to receive {count} events",
            check=lambda least: least >= count,
        )

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        for ws in self.sockets:
            await ws.close()


def publish_work(before: dict[str, int], after: dict[str, int]) -> int:
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # the probes of this test and the listener's health pings are not publish work
    for name in ("info", "ping"):
        counted.pop(name, None)
    return sum(counted.values())


async def settled_calls(r: aioredis.Redis) -> dict[str, int]:
    """The command counts once Redis work has stopped (subscribe-time reads, and the
    unsubscribe of a previous round's channel): two probes 0.1 s apart that agree."""
    last: list[dict[str, int]] = [await command_calls(r)]

    async def unchanged() -> bool:
        now = await command_calls(r)
        same = publish_work(last[0], now) == 0
        last[0] = now
        return same

    await until(unchanged, 20, "Redis command counts to stop moving", interval=0.1)
    return last[0]


async def redis_calls_for_publishes(server: Server, r: aioredis.Redis, subscribers: int) -> int:
    channel = f"fan-{subscribers}"
    async with Subscribers(server, channel, subscribers) as subs:
        before = await settled_calls(r)
        for i in range(20):
            server.publish(channel, i)
        await subs.wait_for(20)
        after = await command_calls(r)
    return publish_work(before, after)


async def test_redis_commands_per_publish_do_not_grow_with_subscribers(
    server: Server, backend_url: str
) -> None:
    r = plain_redis(backend_url)
    try:
        one = await redis_calls_for_publishes(server, r, 1)
        many = await redis_calls_for_publishes(server, r, 200)
    finally:
        await r.aclose()
    assert one > 0
    assert many == one, f"20 publishes cost {one} Redis calls with 1 subscriber, {many} with 200"


async def test_listener_is_gap_free_across_a_killed_redis_connection(
    server: Server, backend_url: str
) -> None:
    r = plain_redis(backend_url)
    n_events = 200
    try:
        async with Subscribers(server, "chaos", 5) as subs:
            published: list[str] = []

            async def publish() -> None:
                for i in range(n_events):
                    published.append(await asyncio.to_thread(server.publish, "chaos", i))

            task = asyncio.create_task(publish())
            for k in range(3):
                # kill at a quarter, a half and three quarters of the stream, each time once
                # the listener is back on its pub/sub connection
                await until(
                    lambda: len(published),
                    30,
                    f"{(k + 1) * n_events // 4} publishes",
                    check=lambda n: n >= (k + 1) * n_events // 4,  # noqa: B023
                )
                await until(
                    lambda: r.execute_command("CLIENT", "LIST", "TYPE", "pubsub"),
                    30,
                    "the listener subscribed again",
                    check=lambda listed: b"pushsvc-listener" in listed,
                )
                killed = await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                assert int(killed) >= 1
            await task
            await subs.wait_for(n_events, timeout=30)
            await asyncio.sleep(0.3)  # window: a duplicate would arrive now
            for received in subs.received:
                assert received == published
    finally:
        await r.aclose()
    ready = await asyncio.to_thread(__import__("httpx").get, server.url + "/readyz")
    assert ready.json()["listener"]["reconnects"] >= 3
    assert (await poll_once(server.url, ["chaos"], server.token(), timeout=0))["events"] == []
