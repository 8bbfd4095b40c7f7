"""Capacity: what pushsvc holds in Redis per event, per idempotency record, per idle
channel and per presence entry, measured on a Redis of its own.

    python benchmarks/capacity.py --out benchmarks/results/capacity

Each figure is the growth of ``INFO memory`` ``used_memory`` over N items written
through ``RedisBackend`` (the real scripts and key layout), divided by N; the streams
are cross-checked with ``MEMORY USAGE``. "Before" rows replay the layout this release
replaced (one ``SET …:idem:<key> <id> PX <ttl>`` per record), for comparison. A
throwaway ``redis-server`` is started on a free port unless ``--url`` names one (then
``used_memory`` is the whole server's: keep it otherwise idle). The server's RSS per idle
connection is not remeasured here: it comes from ``pushsvc bench``'s connections phase
(``benchmarks/results/memory/bench.md``), quoted as is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from pushsvc.backends.base import Message, PresenceEntry, Retention
from pushsvc.backends.redis import RedisBackend

BATCH = 500
BENCH_MD = Path("benchmarks/results/memory/bench.md")
DAY = 24 * 3600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def redis_server(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: pass --url")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.create_subprocess_exec(
            *[exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = aioredis.from_url(url)
            deadline = time.monotonic() + 10
            while True:
                try:
                    await client.ping()
                    break
                except (OSError, aioredis.ConnectionError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)  # poll: the server is starting
            await client.aclose()
            yield url
        finally:
            proc.terminate()
            await proc.wait()


class Meter:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = aioredis.from_url(url)

    async def used(self) -> int:
        info = await self.client.info("memory")
        return int(info["used_memory"])

    async def per_item(self, n: int, write: Callable[[], Awaitable[None]]) -> float:
        before = await self.used()
        await write()
        return (await self.used() - before) / n

    def backend(self, retention: Retention) -> RedisBackend:
        prefix = f"cap-{uuid.uuid4().hex[:8]}:"
        return RedisBackend(f"{self.url}?prefix={prefix}", retention)


def ws_key(i: int) -> str:
    """A WebSocket publish's idempotency key: ``u:<subject>:<client message id>``."""
    return f"u:user-{i % 1000}:{uuid.uuid4().hex}"


async def append_all(backend: RedisBackend, messages: list[Message]) -> None:
    for i in range(0, len(messages), BATCH):
        await backend.append_many(messages[i : i + BATCH])


async def run(url: str, n: int) -> dict[str, object]:
    meter = Meter(url)
    retention = Retention(max_len=2 * n, max_age=DAY, idempotency_ttl=600.0)
    rows: dict[str, dict[str, object]] = {}

    def row(name: str, value: float, how: str) -> None:
        rows[name] = {"bytes": round(value), "measured": how}
        print(f"{name:<48} {value:8.0f} B   {how}", file=sys.stderr)

    backend = meter.backend(retention)
    await backend.start()
    try:
        for size, label in ((100, "100 B"), (1024, "1 KiB")):
            channel = f"events-{size}"
            messages = [Message(channel, "message", b"x" * size) for _ in range(n)]
            value = await meter.per_item(n, functools.partial(append_all, backend, messages))
            row(f"event, {label} payload", value, f"{n} events on one channel")
            usage = await meter.client.memory_usage(backend._stream_key(channel), samples=0)
            row(f"event, {label} payload (MEMORY USAGE)", (usage or 0) / n, "the stream key / N")

        base = await meter.per_item(
            n,
            lambda: append_all(backend, [Message("plain", "message", b"x" * 100)] * n),
        )
        keyed = await meter.per_item(
            n,
            lambda: append_all(
                backend,
                [
                    Message("keyed", "message", b"x" * 100, idempotency_key=ws_key(i))
                    for i in range(n)
                ],
            ),
        )
        row(
            "idempotency record, busy channel",
            keyed - base,
            f"{n} keyed 100 B events minus {n} plain ones, one channel",
        )
        base = await meter.per_item(
            n,
            lambda: append_all(
                backend, [Message(f"plain-{i}", "message", b"x" * 100) for i in range(n)]
            ),
        )
        row("idle channel with one 100 B event", base, f"{n} channels, one event each")
        keyed = await meter.per_item(
            n,
            lambda: append_all(
                backend,
                [
                    Message(f"keyed-{i}", "message", b"x" * 100, idempotency_key=ws_key(i))
                    for i in range(n)
                ],
            ),
        )
        row(
            "idempotency record, one per channel",
            keyed - base,
            f"{n} channels with one keyed event minus {n} with a plain one",
        )

        async def old_layout() -> None:
            async with meter.client.pipeline(transaction=False) as pipe:
                for i in range(n):
                    pipe.set(
                        f"{backend.prefix}{{old}}:idem:{ws_key(i)}",
                        f"{int(time.time() * 1000)}-{i}",
                        px=int(DAY * 1000),
                    )
                await pipe.execute()

        row(
            "idempotency record, before (a key each)",
            await meter.per_item(n, old_layout),
            f"{n} x SET <prefix>{{channel}}:idem:<key> <id> PX 86400000",
        )

        entries = [
            PresenceEntry("room", f"conn-{i}", f"user-{i}", b'{"name":"x"}') for i in range(n)
        ]

        async def join(batch: list[PresenceEntry]) -> None:
            for i in range(0, len(batch), BATCH):
                await backend.presence_join_many(batch[i : i + BATCH])

        row(
            "presence entry (one member, one connection)",
            await meter.per_item(n, lambda: join(entries)),
            f"{n} entries on one channel",
        )
        spread = [
            PresenceEntry(f"room-{i}", f"conn-{i}", f"user-{i}", b'{"name":"x"}') for i in range(n)
        ]
        row(
            "presence, channel with one entry",
            await meter.per_item(n, lambda: join(spread)),
            f"{n} channels, one entry each",
        )
        server = await meter.client.info("server")
    finally:
        keys = [k async for k in meter.client.scan_iter(match=backend.prefix + "*", count=1000)]
        for i in range(0, len(keys), 1000):
            await meter.client.delete(*keys[i : i + 1000])
        await backend.close()
        await meter.client.aclose()
    return {
        "n": n,
        "redis": server["redis_version"],
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "retention": {"max_age": DAY, "idempotency_ttl": 600.0},
        "redis_bytes": rows,
        "server_rss_per_idle_connection": connections_from_bench(BENCH_MD),
    }


def connections_from_bench(path: Path) -> dict[str, object]:
    """The connections table of ``pushsvc bench`` (server RSS KiB per idle connection)."""
    text = path.read_text()
    command = re.search(r"^- command: `(.+)`$", text, re.M)
    section = text.split("## connections", 1)[1].split("\n## ", 1)[0]
    per: dict[str, float] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4 and cells[0] in ("websocket", "sse", "long-polling"):
            per[cells[0]] = float(cells[3])
    return {
        "source": str(path),
        "command": command.group(1) if command else None,
        "kib_per_connection": per,
    }


def markdown(result: dict[str, object], command: str) -> str:
    rows = result["redis_bytes"]
    conns = result["server_rss_per_idle_connection"]
    assert isinstance(rows, dict) and isinstance(conns, dict)
    lines = [
        "# pushsvc capacity",
        "",
        f"- command: `{command}`",
        f"- redis: {result['redis']}; python {result['python']}; {result['machine']}",
        f"- N = {result['n']} items per row; bytes = growth of `used_memory` / N",
        "",
        "## Redis memory",
        "",
        "| item | bytes | measured |",
        "|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['bytes']:,} | {r['measured']} |")
    lines += [
        "",
        "## Server memory per idle connection",
        "",
        f"From `{conns['source']}` (`{conns['command']}`):",
        "",
        "| transport | server RSS KiB per idle connection |",
        "|---|---|",
    ]
    per = conns["kib_per_connection"]
    assert isinstance(per, dict)
    for transport, kib in per.items():
        lines.append(f"| {transport} | {kib} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="a Redis of its own (default: start a throwaway one)")
    parser.add_argument("-n", type=int, default=10_000, help="items per measurement")
    parser.add_argument("--out", type=Path, help="write capacity.json and capacity.md here")
    args = parser.parse_args()

    async def go() -> dict[str, object]:
        async with redis_server(args.url) as url:
            return await run(url, args.n)

    result = asyncio.run(go())
    command = "python benchmarks/capacity.py" + "".join(
        f" {a}" for a in sys.argv[1:] if not a.startswith("redis://")
    )
    result["command"] = command
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "capacity.md").write_text(markdown(result, command))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
