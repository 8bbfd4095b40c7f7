"""Live notifications from Redis: Lua XADD+SPUBLISH (what ``RedisBackend`` does) against
plain XADD read by one multiplexed ``XREAD BLOCK`` listener (DESIGN decision 2).

    python benchmarks/backend_notify.py --url redis://127.0.0.1:6379/0

For each approach: end-to-end throughput (pipelined batches until the listener has every
event), Redis CPU per event (INFO commandstats: EVALSHA, or XADD + XREAD), and delivery
latency of single events published one at a time. Publisher and listener share one
process; use a Redis nobody else is using.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from pushsvc.backends.base import Message, Retention
from pushsvc.backends.redis import RedisBackend
from pushsvc.protocol.events import Event

Publish = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


class Clock:
    """Counts deliveries and records the latency of stamped payloads."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[int] = []
        self.changed = asyncio.Event()

    def deliver(self, data: bytes) -> None:
        self.count += 1
        if data.startswith(b"t"):
            self.latencies.append(time.perf_counter_ns() - int(data[1:20]))
        self.changed.set()

    async def wait(self, count: int) -> None:
        while self.count < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)


async def server_usec(r: aioredis.Redis, commands: tuple[str, ...]) -> int:
    stats = await r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in commands)


async def measure(
    name: str,
    r: aioredis.Redis,
    commands: tuple[str, ...],
    publish: Publish,
    clock: Clock,
    channels: list[str],
    args: argparse.Namespace,
) -> None:
    body = b"x" * args.size
    usec = await server_usec(r, commands)
    started = time.perf_counter()
    for _ in range(args.events // args.batch):
        await publish([(random.choice(channels), body) for _ in range(args.batch)])
    await clock.wait(args.events)
    elapsed = time.perf_counter() - started
    per_event = (await server_usec(r, commands) - usec) / args.events
    clock.latencies.clear()
    for _ in range(args.singles):
        stamp = b"t%019d" % time.perf_counter_ns()
        before = clock.count
        await publish([(random.choice(channels), stamp + body[20:])])
        await clock.wait(before + 1)
    lat = sorted(clock.latencies)
    print(
        f"{name:32s} {args.events / elapsed:8.0f} events/s end to end, "
        f"Redis {per_event:5.1f} us/event, single-event latency "
        f"p50 {lat[len(lat) // 2] / 1e3:6.0f} us  p99 {lat[int(len(lat) * 0.99)] / 1e3:6.0f} us"
    )


async def bench_pubsub(url: str, channels: list[str], args: argparse.Namespace) -> None:
    prefixed = f"{url}?prefix=bench-{uuid.uuid4().hex}:"
    listener = RedisBackend(prefixed, Retention(max_len=10_000))
    publisher = RedisBackend(prefixed, Retention(max_len=10_000))
    clock = Clock()

    def sink(event: Event) -> None:
        clock.deliver(event.data)

    async def publish(batch: list[tuple[str, bytes]]) -> None:
        await publisher.append_many([Message(c, "m", d) for c, d in batch])

    listener.set_sink(sink)
    await listener.start()
    await publisher.start()
    for c in channels:
        await listener.listen(c)
    r = aioredis.from_url(url)
    await measure("Lua XADD + SPUBLISH", r, ("evalsha",), publish, clock, channels, args)
    await r.aclose()
    await listener.close()
    await publisher.close()


async def bench_xread(url: str, channels: list[str], args: argparse.Namespace) -> None:
    prefix = f"bench-{uuid.uuid4().hex}:"
    key_of = {c: f"{prefix}{{{c}}}:log" for c in channels}
    pub = aioredis.from_url(url, protocol=2)
    sub = aioredis.from_url(url, protocol=2, socket_timeout=None)
    clock = Clock()

    async def listen() -> None:
        last: dict[str, str] = dict.fromkeys(key_of.values(), "0-0")  # fresh keys
        while True:
            replies: Any = await sub.xread(last, count=1000, block=0)  # type: ignore[arg-type]
            for key, entries in replies:
                for _, fields in entries:
                    clock.deliver(fields[b"d"])
                last[key.decode()] = entries[-1][0].decode()

    async def publish(batch: list[tuple[str, bytes]]) -> None:
        async with pub.pipeline(transaction=False) as pipe:
            for c, d in batch:
                pipe.xadd(key_of[c], {"e": "m", "d": d}, maxlen=10_000, approximate=True)
            await pipe.execute()

    reader = asyncio.create_task(listen())
    r = aioredis.from_url(url)
    await measure("XADD + multiplexed XREAD", r, ("xadd", "xread"), publish, clock, channels, args)
    reader.cancel()
    await r.aclose()
    await pub.aclose()
    await sub.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    channels = [f"ch-{i}" for i in range(args.channels)]
    print(
        f"{args.events} events of {args.size} B over {args.channels} channels in batches of "
        f"{args.batch}, then {args.singles} single events; {args.url}"
    )
    for _ in range(args.rounds):
        await bench_pubsub(args.url, channels, args)
        await bench_xread(args.url, channels, args)


if __name__ == "__main__":
    asyncio.run(main())
