"""WebSocket compression: bytes on the wire, server CPU and idle memory, per connection
and per delivery, for pushsvc plain, pushsvc's compression (``--ws-compression``:
compressed once per event) and uvicorn's own permessage-deflate, in ONE run.

    python benchmarks/ws_compression.py -n 500 -k 200 --out benchmarks/results/ws-compression

Each configuration is a fresh server (memory backend) pinned to CPU 0; this process (the
subscribers, with the ``websockets`` client, and the publisher) runs on CPU 1:

- ``plain``: ``pushsvc serve`` (the lean protocols), clients without compression;
- ``pushsvc-deflate``: ``pushsvc serve --ws-compression``, clients offering deflate;
- ``uvicorn-deflate``: uvicorn's default WebSocket protocol (``auto``, websockets-sansio:
  deflate with context takeover, windows of 2^12, memLevel 5) serving the same app;
- ``uvicorn-legacy-deflate``: uvicorn's ``--ws websockets`` (deflate at zlib defaults).

The two uvicorn ones run ``python -m uvicorn --factory pushsvc.app:app_from_env`` with
uvicorn's default ``ws_per_message_deflate=True``: the app writes plain text frames and
uvicorn compresses each message once per connection.

N subscribers join one channel (so pushsvc's frames are shared), then K events of about
1 KiB of realistic JSON (an order with items: repetitive keys) are published over HTTP,
one after another, and the run waits until every subscriber got all K. Measured:

- bytes on the wire per delivery: the TCP payload the server sent on its WebSocket
  connections (``ss -tin``'s ``bytes_acked`` of every socket on the server's port, before
  and after; the publisher's keep-alive HTTP connection is on the same port: K small
  responses, counted too), divided by N*K;
- server CPU per delivery: the server's ``utime + stime`` (``/proc/<pid>/stat``) over
  the publish-and-deliver phase, divided by N*K (the K HTTP publishes included);
- idle memory per connection: the server's RSS with N subscribed idle connections minus
  its RSS before they connected, divided by N, once before the events and once after
  (compressors allocate their buffers as they first write).

Bounded: at most 2000 connections and 1000 events, every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import websockets

SECRET = "bench-secret-" + "x" * 24
API_KEY = "bench-api-key"
CHANNEL = "orders"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"cmd": ["serve"], "client_deflate": False},
    "pushsvc-deflate": {"cmd": ["serve", "--ws-compression"], "client_deflate": True},
    "uvicorn-deflate": {"cmd": ["uvicorn", "auto"], "client_deflate": True},
    "uvicorn-legacy-deflate": {"cmd": ["uvicorn", "websockets"], "client_deflate": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def order(i: int) -> dict[str, Any]:
    """About 1 KiB of JSON, as a shop's backend would publish."""
    return {
        "order_id": f"ord-{100000 + i}",
        "status": "created",
        "created_at": f"2026-11-29T10:{i % 60:02d}:{(i * 7) % 60:02d}Z",
        "customer": {"id": 5000 + i % 97, "name": f"Customer {i % 97}", "tier": "gold"},
        "shipping": {"method": "standard", "city": "Lyon", "country": "FR"},
        "items": [
            {
                "sku": f"SKU-{(i * 13 + j) % 1000:04d}",
                "name": f"Product {(i + j) % 50}",
                "quantity": 1 + (i + j) % 3,
                "unit_price_cents": 499 + ((i * j) % 40) * 100,
            }
            for j in range(8)
        ],
        "total_cents": 10_000 + i,
        "currency": "EUR",
    }


def start_server(name: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "PUSHSVC_BACKEND_URL": "memory://",
            "PUSHSVC_SECRETS": SECRET,
            "PUSHSVC_API_KEYS": API_KEY,
            "PUSHSVC_MAX_CONNECTIONS": "100000",
            "PUSHSVC_PUBLISH_RATE": "0",
            "PUSHSVC_API_KEY_PUBLISH_RATE": "0",
        }
    )
    kind, *rest = CONFIGS[name]["cmd"]
    if kind == "serve":
        cmd = [sys.executable, "-m", "pushsvc", "serve", "--port", str(port), *rest]
        cmd += ["--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "pushsvc.app:app_from_env"]
        cmd += ["--port", str(port), "--ws", rest[0], "--http", "httptools"]
        cmd += ["--log-level", "warning"]
    return subprocess.Popen(
        cmd, env=env, preexec_fn=lambda: os.sched_setaffinity(0, {0}), stdout=subprocess.DEVNULL
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def bytes_acked(port: int) -> int:
    """TCP payload acknowledged on every established socket of the server's port."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(n) for n in re.findall(r"bytes_acked:(\d+)", out))


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)  # poll: against the deadline


async def settle_rss(pid: int) -> int:
    """RSS once it stops moving (two readings 0.5 s apart within 1%), at most 5 s."""
    last = rss_bytes(pid)
    for _ in range(10):
        await asyncio.sleep(0.5)  # window: let the allocator settle
        now = rss_bytes(pid)
        if abs(now - last) <= last // 100:
            return now
        last = now
    return last


class Subscriber:
    def __init__(self) -> None:
        self.events = 0
        self.subscribed = asyncio.Event()
        self.extensions = ""

    async def run(self, url: str, deflate: bool) -> None:
        compression = "deflate" if deflate else None
        async with websockets.connect(
            url, compression=compression, max_size=None, open_timeout=60, ping_interval=None
        ) as ws:
            self.extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send(json.dumps({"type": "subscribe", "channels": [CHANNEL]}))
            async for message in ws:
                if '"type":"event"' in message:
                    self.events += message.count('"type":"event"')
                elif not self.subscribed.is_set() and '"type":"subscribed"' in message:
                    self.subscribed.set()


async def measure(name: str, n: int, k: int) -> dict[str, Any]:
    port = free_port()
    proc = start_server(name, port)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name}: server did not start")
                await asyncio.sleep(0.1)  # poll: until the server answers
            from pushsvc.auth import Authenticator

            token = Authenticator((SECRET,), (API_KEY,)).issue("bench", subscribe=("*",), ttl=3600)
            ws_url = f"ws://127.0.0.1:{port}/v1/ws?token={token}"
            headers = {"Authorization": f"Bearer {API_KEY}"}
            # warm-up: one publish through the keep-alive connection, then baseline
            await http.post(
                "/v1/publish", json={"channel": "warm", "data": order(0)}, headers=headers
            )
            rss_base = await settle_rss(proc.pid)

            subs = [Subscriber() for _ in range(n)]
            tasks = []
            for i, sub in enumerate(subs):
                tasks.append(asyncio.create_task(sub.run(ws_url, CONFIGS[name]["client_deflate"])))
                if i % 50 == 49:
                    await asyncio.gather(*(s.subscribed.wait() for s in subs[i - 49 : i + 1]))
            await until(lambda: all(s.subscribed.is_set() for s in subs), 120, "subscribed")
            rss_idle_before = await settle_rss(proc.pid)

            payloads = [order(i) for i in range(k)]
            frame_bytes = [len(json.dumps(p, separators=(",", ":"))) for p in payloads]
            acked_before = bytes_acked(port)
            cpu_before = cpu_seconds(proc.pid)
            wall = time.perf_counter()
            for data in payloads:
                r = await http.post(
                    "/v1/publish", json={"channel": CHANNEL, "data": data}, headers=headers
                )
                r.raise_for_status()
            await until(lambda: all(s.events >= k for s in subs), 300, "delivered")
            wall = time.perf_counter() - wall
            cpu = cpu_seconds(proc.pid) - cpu_before
            await asyncio.sleep(0.5)  # window: the last ACKs come back
            acked = bytes_acked(port) - acked_before
            rss_idle_after = await settle_rss(proc.pid)
            delivered = sum(min(s.events, k) for s in subs)
            extensions = {s.extensions for s in subs}
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "config": name,
        "connections": n,
        "events": k,
        "deliveries": delivered,
        "event_json_bytes_mean": sum(frame_bytes) / len(frame_bytes),
        "negotiated": sorted(extensions),
        "wire_bytes_per_delivery": acked / delivered,
        "server_cpu_us_per_delivery": cpu * 1e6 / delivered,
        "server_cpu_seconds": cpu,
        "wall_seconds": wall,
        "rss_baseline_bytes": rss_base,
        "idle_bytes_per_connection_before_events": (rss_idle_before - rss_base) / n,
        "idle_bytes_per_connection_after_events": (rss_idle_after - rss_base) / n,
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| configuration | negotiated | bytes on the wire per delivery | server CPU per delivery "
        "| idle memory per connection (before events / after) |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        negotiated = "; ".join(r["negotiated"]) or "none"
        rows.append(
            f"| `{r['config']}` | `{negotiated}` | {r['wire_bytes_per_delivery']:.0f} B "
            f"| {r['server_cpu_us_per_delivery']:.1f} µs "
            f"| {r['idle_bytes_per_connection_before_events'] / 1024:.1f} KiB / "
            f"{r['idle_bytes_per_connection_after_events'] / 1024:.1f} KiB |"
        )
    head = [
        "# WebSocket compression",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit: `{report['commit']}`, {report['started']} UTC, {report['machine']}  ",
        f"{report['connections']} subscribers on one channel, {report['events']} events of "
        f"{report['event_json_bytes_mean']:.0f} bytes of JSON on average (the WebSocket frame "
        "adds the envelope and cursor); server pinned to CPU 0, clients on CPU 1.",
        "",
    ]
    return "\n".join(head + rows) + "\n"


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=500)
    parser.add_argument("-k", "--events", type=int, default=200)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 2000 or not 1 <= args.events <= 1000:
        parser.error("at most 2000 connections and 1000 events")
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    results = []
    for name in args.configs:
        print(f"{name}: {args.connections} connections, {args.events} events", flush=True)
        result = await measure(name, args.connections, args.events)
        print(json.dumps(result), flush=True)
        results.append(result)
    report = {
        "command": "python benchmarks/ws_compression.py " + " ".join(argv or sys.argv[1:]),
        "commit": git_commit(),
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, websockets {websockets.__version__}",
        "connections": args.connections,
        "events": args.events,
        "event_json_bytes_mean": results[0]["event_json_bytes_mean"],
        "results": results,
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ws-compression.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "ws-compression.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
