"""The Python client (``pushsvc.client``): WebSocket first, SSE and long-polling when a
proxy blocks the better ones, the cursor kept across every reconnect, and an outbox whose
messages are stored once however often they are resent.

    PUSHSVC_TOKEN=... python examples/python_client.py chat:lobby --publish hi --count 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pushsvc.client import Client, Event, Gap


async def run(args: argparse.Namespace) -> int:
    # --8<-- [start:client]
    def on_state(state: str, transport: str | None) -> None:
        print("state", state, transport or "-")

    client = Client(
        args.url,
        args.token,  # or a function answering a fresh token before each connection
        args.channels,
        cursor=args.cursor,  # resume from here; None: from now on
        on_state=on_state,
    )
    received = 0
    async with client:
        acks = [client.publish(args.channels[0], {"text": text}) for text in args.publish]
        async for item in client:
            if isinstance(item, Gap):
                print("gap", item.channel, item.after, item.until)
            elif isinstance(item, Event):
                print("event", item.channel, item.event, item.id, item.data)
                received += 1
                if received >= args.count:
                    break
        for ack in acks:  # each resolves to the event ID once the server stored it
            print("published", await ack)
        print("cursor", client.cursor)  # keep it to resume later, on any transport
    # --8<-- [end:client]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channels", nargs="*", default=["chat:lobby"])
    parser.add_argument("--url", default=os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("PUSHSVC_TOKEN"))
    parser.add_argument("--cursor", default=os.environ.get("PUSHSVC_CURSOR"))
    parser.add_argument("--publish", action="append", default=[], help="text to publish")
    parser.add_argument("--count", type=int, default=10, help="exit after this many events")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set PUSHSVC_TOKEN")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
