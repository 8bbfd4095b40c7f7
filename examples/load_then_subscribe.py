"""Load what a channel holds over HTTP, render it, then subscribe from exactly there: the
history answer's ``cursor`` positions the channel right after the last event it returned,
so nothing loaded comes twice and nothing published in between is missed.

    PUSHSVC_TOKEN=... python examples/load_then_subscribe.py chat:lobby --count 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import httpx

from pushsvc.client import Client, Event, Gap


async def run(args: argparse.Namespace) -> int:
    # --8<-- [start:load]
    headers = {"Authorization": f"Bearer {args.token}"}
    cursor = None
    async with httpx.AsyncClient(base_url=args.url, headers=headers) as http:
        for channel in args.channels:
            after = None
            while True:  # page through the channel's history
                params = {"limit": 100, "after": after, "cursor": cursor}
                r = await http.get(
                    f"/v1/channels/{channel}/history",
                    params={k: v for k, v in params.items() if v is not None},
                )
                r.raise_for_status()
                page = r.json()
                for item in page["events"]:
                    print("loaded", item["channel"], item.get("id"), item.get("data"))
                cursor = page["cursor"]  # right after this page, plus earlier channels
                if len(page["events"]) < 100:
                    break
                after = page["next_after"]
    print("loaded-all")

    # subscribe from exactly where the load ended, on every channel at once
    received = 0
    async with Client(args.url, args.token, args.channels, cursor=cursor) as client:
        async for item in client:
            if isinstance(item, Gap):
                print("gap", item.channel, item.after, item.until)
            elif isinstance(item, Event):
                print("live", item.channel, item.id, item.data)
                received += 1
                if received >= args.count:
                    break
    # --8<-- [end:load]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channels", nargs="*", default=["chat:lobby"])
    parser.add_argument("--url", default=os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("PUSHSVC_TOKEN"))
    parser.add_argument("-n", "--count", type=int, default=10, help="live events to wait for")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set PUSHSVC_TOKEN")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
