"""Long-polling with plain httpx: each request carries token, channels and cursor, so any
instance can answer it; the answer's cursor is where the next request goes on.

    PUSHSVC_TOKEN=... python examples/long_poll.py chat:lobby --count 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channels", nargs="*", default=["chat:lobby"])
    parser.add_argument("--url", default=os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("PUSHSVC_TOKEN"))
    parser.add_argument("--cursor", default=os.environ.get("PUSHSVC_CURSOR"))
    parser.add_argument("--count", type=int, default=10, help="exit after this many events")
    parser.add_argument("--timeout", type=float, default=20, help="seconds a poll may wait")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set PUSHSVC_TOKEN")

    # --8<-- [start:loop]
    cursor = args.cursor
    received = 0
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout + 10) as client:
        while received < args.count:
            params = {"channel": args.channels, "timeout": args.timeout}
            if cursor:
                params["cursor"] = cursor
            try:
                r = client.get("/v1/poll", params=params)
            except httpx.TransportError:
                time.sleep(1)  # same request again: the cursor did not move
                continue
            if r.status_code in (429, 503):
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code != 200:  # 401 (token expired?), 403, 400: stop
                print("refused", r.status_code, r.json()["detail"])
                return 1
            answer = r.json()
            for item in answer["events"]:
                if item["type"] == "gap":
                    print("gap", item["channel"], item["after"], item["until"])
                    continue
                received += 1
                data = json.dumps(item["data"])
                print("event", item["channel"], item["event"], item["id"], data)
            cursor = answer["cursor"]  # also when there were no events (quiet channels)
    # --8<-- [end:loop]
    print("cursor", cursor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
