"""Subscribe over Server-Sent Events with plain httpx, and resume after a dropped
connection by sending the last ``id:`` back as ``Last-Event-ID``.

    PUSHSVC_TOKEN=... python examples/subscribe_sse.py chat:lobby --count 5

Prints one line per event and, at the end, the cursor to resume from
(``--last-event-id CURSOR`` on the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx


# --8<-- [start:parser]
@dataclass
class Frame:
    event: str
    data: str
    id: str | None


def sse_frames(lines: Iterator[str]) -> Iterator[Frame]:
    """The SSE wire format: ``field: value`` lines, a blank line ends a frame,
    lines starting with ``:`` are comments (pushsvc sends one at once on connect)."""
    event, data, last_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield Frame(event, "\n".join(data), last_id)
            event, data = "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value


# --8<-- [end:parser]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channels", nargs="*", default=["chat:lobby"])
    parser.add_argument("--url", default=os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("PUSHSVC_TOKEN"))
    parser.add_argument("--last-event-id", default=os.environ.get("PUSHSVC_CURSOR"))
    parser.add_argument("--count", type=int, default=10, help="exit after this many events")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set PUSHSVC_TOKEN")

    # --8<-- [start:loop]
    last_event_id = args.last_event_id  # a cursor: where to resume, on every channel
    received, retry = 0, 2.0
    # read timeout: well above the 15 s heartbeat, so a dead connection is noticed
    client = httpx.Client(base_url=args.url, timeout=httpx.Timeout(10, read=45))
    while received < args.count:
        headers = {"Authorization": f"Bearer {args.token}"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            with client.stream(
                "GET", "/v1/sse", params={"channel": args.channels}, headers=headers
            ) as response:
                if response.status_code != 200:  # 401, 403, 400: reconnecting will not help
                    response.read()
                    print("refused", response.status_code, response.json()["detail"])
                    return 1
                for frame in sse_frames(response.iter_lines()):
                    last_event_id = frame.id or last_event_id
                    item = json.loads(frame.data)
                    if frame.event == "message":
                        received += 1
                        data = json.dumps(item["data"])
                        print("message", item["channel"], item["event"], item["id"], data)
                    elif frame.event == "subscribed":  # its id is already a cursor
                        print("subscribed", ",".join(item["channels"]))
                    elif frame.event == "gap":  # trimmed before we read them: say so
                        print("gap", item["channel"], item["after"], item["until"])
                    elif frame.event == "token-expired":
                        print("token expired: get a fresh token, resume from the cursor")
                        return 2
                    elif frame.event == "close":  # e.g. 1012 server restart, 4008 too slow
                        print("closed by the server", item["code"], item["reason"])
                        break
                    if received >= args.count:
                        break
        except httpx.TransportError as exc:  # dropped connection: resume from the cursor
            print("connection lost:", type(exc).__name__)
        if received < args.count:
            time.sleep(retry)
    # --8<-- [end:loop]
    client.close()
    print("cursor", last_event_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
