"""Peer: a bare ``websockets`` asyncio server that fans out with ``websockets.broadcast()``.

    python benchmarks/peers/websockets_broadcast.py --host 127.0.0.1 --port 8002 \\
        [--publish-port 8003]

- ``GET /ws?channel=C`` (WebSocket, port ``--port``): a subscriber of channel C. No
  compression, no protocol pings (``ping_interval=None``), like the other peers.
- ``POST /publish?channel=C`` on ``--publish-port`` (default ``--port`` + 1): the body is
  the payload, sent verbatim as one text message to every subscriber of C with
  ``websockets.broadcast()`` (the frame is encoded once), answered ``204``.

Why a second port: the ``websockets`` server answers only ``GET`` (its HTTP parser refuses
other methods, so ``process_request`` never sees a ``POST``). The publish endpoint is a
minimal HTTP/1.1 keep-alive server (``asyncio.start_server``) in the same process and event
loop, so the process's CPU time covers publishing and fan-out; publishing costs one small
request per event, against 300-1,000 deliveries per event in the comparison.
No SSE: ``websockets`` speaks only WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import ServerConnection, serve

subs: dict[str, set[ServerConnection]] = defaultdict(set)


def _channel(target: str) -> str:
    return parse_qs(urlsplit(target).query).get("channel", [""])[0]


async def handler(ws: ServerConnection) -> None:
    channel = _channel(ws.request.path if ws.request else "")
    group = subs[channel]
    group.add(ws)
    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass
    finally:
        group.discard(ws)


async def http_publish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POST /publish?channel=C with a Content-Length body; GET /healthz; keep-alive."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if method == "POST" and target.startswith("/publish"):
                websockets.broadcast(subs.get(_channel(target), ()), body.decode())
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif method == "GET" and target.startswith("/healthz"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int, publish_port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    publisher = await asyncio.start_server(http_publish, host, publish_port)
    async with serve(
        handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_queue=None,
        server_header=None,
        close_timeout=1,
        backlog=2048,  # uvicorn's; asyncio's 100 drops SYNs when hundreds connect at once
    ):
        await stop
    publisher.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--publish-port", type=int, help="default: --port + 1")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port, args.publish_port or args.port + 1))
