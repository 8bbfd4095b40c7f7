"""What ONE presence refresh costs: a process renewing N entries over C channels on Redis,
the batched call ``Hub.refresh_presence`` makes every ``presence_refresh_interval``.

    python benchmarks/presence_refresh.py --url redis://127.0.0.1:6379/0 \
        --entries 10000 --channels 100 --rounds 15 \
        --out benchmarks/results/presence-idle/refresh.json

Measures, per refresh: this process's CPU (``time.process_time``: building and sending
the pipeline, parsing the answers), the wall time, and Redis's CPU (``INFO cpu`` deltas:
use a Redis of its own, the counters are the whole server's). Uses a key prefix of its
own and deletes its entries at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from pushsvc.backends.base import PresenceEntry, Retention
from pushsvc.backends.redis import RedisBackend


async def redis_cpu(url: str) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def run(args: argparse.Namespace) -> dict[str, object]:
    prefix = f"bench-refresh-{uuid.uuid4().hex[:8]}:"
    backend = RedisBackend(f"{args.url}?prefix={prefix}", Retention(presence_ttl=600))
    await backend.start()
    entries = [
        PresenceEntry(f"room{i % args.channels}", f"bench.{i}", f"user{i}", b'{"name":"x"}')
        for i in range(args.entries)
    ]
    try:
        await backend.presence_join_many(entries)
        cpu, wall = [], []
        redis_before = await redis_cpu(args.url)
        for _ in range(args.rounds):
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            missing = await backend.presence_refresh(entries)
            cpu.append(time.process_time() - t_cpu)
            wall.append(time.perf_counter() - t_wall)
            assert not missing, f"{len(missing)} entries were lost"
        redis_used = (await redis_cpu(args.url) - redis_before) / args.rounds
    finally:
        for e in entries:
            await backend.presence_leave(e.channel, e.conn_id)
        await backend.close()
    per_refresh_ms = statistics.median(cpu) * 1000
    return {
        "entries": args.entries,
        "channels": args.channels,
        "rounds": args.rounds,
        "process_cpu_ms_per_refresh_median": round(per_refresh_ms, 2),
        "process_cpu_ms_per_refresh_min": round(min(cpu) * 1000, 2),
        "wall_ms_per_refresh_median": round(statistics.median(wall) * 1000, 2),
        "redis_cpu_ms_per_refresh": round(redis_used * 1000, 2),
        "process_cpu_us_per_entry": round(per_refresh_ms * 1000 / args.entries, 3),
        "share_of_a_core_at_5s_interval_percent": round(per_refresh_ms / 5000 * 100, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
