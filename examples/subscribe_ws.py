"""Subscribe and publish over the WebSocket with the ``websockets`` library: subscribe
with a cursor, publish with a client message id and wait for its ack, print events, and
reconnect from the cursor when the close code's policy says so (the one table,
``pushsvc.protocol.codes``).

    PUSHSVC_TOKEN=... python examples/subscribe_ws.py chat:lobby --publish hello --count 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

import websockets

from pushsvc.protocol.codes import Policy, close_policy


# --8<-- [start:session]
async def session(url: str, token: str, channels: list[str], state: dict) -> None:
    async with websockets.connect(
        url + "/v1/ws",
        additional_headers={"Authorization": f"Bearer {token}"},  # or ?token=… in browsers
        max_size=2**20,
    ) as ws:
        subscribe = {"type": "subscribe", "channels": channels, "cursor": state["cursor"]}
        await ws.send(json.dumps(subscribe))
        for text in state["outbox"].values():  # not acked yet: resend, stored once
            await ws.send(text)
        async for frame in ws:
            if isinstance(frame, bytes):  # a binary event: JSON header, newline, payload
                header, _, payload = frame.partition(b"\n")
                msg = json.loads(header)
                msg["data"] = f"<{len(payload)} bytes>"
            else:
                msg = json.loads(frame)
            kind = msg["type"]
            if "cursor" in msg:
                state["cursor"] = msg["cursor"]  # keep the newest: resume from here
            if kind == "event":
                state["received"] += 1
                data = json.dumps(msg["data"])
                print("event", msg["channel"], msg["event"], msg["id"], data)
            elif kind == "ack":  # the publish is stored; its event ID
                state["outbox"].pop(msg["id"], None)
                print("ack", msg["id"], msg["event_id"])
            elif kind == "gap":
                print("gap", msg["channel"], msg["after"], msg["until"])
            elif kind == "error":  # a failed request; the connection stays open
                print("error", msg["status"], msg["detail"])
                state["outbox"].pop(msg.get("id"), None)
            elif kind == "subscribed":
                print("subscribed", ",".join(msg["channels"]))
            # heartbeat, pong: nothing to do
            if state["received"] >= state["count"] and not state["outbox"]:
                return  # done: every event read and every publish acked


# --8<-- [end:session]


async def run(args: argparse.Namespace) -> int:
    state = {"cursor": args.cursor, "received": 0, "count": args.count, "outbox": {}}
    # --8<-- [start:publish]
    for text in args.publish:
        msg_id = str(uuid.uuid4())  # the client message id is also the idempotency key
        frame = {"type": "publish", "id": msg_id, "channel": args.channels[0], "data": text}
        state["outbox"][msg_id] = json.dumps(frame)
    # --8<-- [end:publish]
    url = "ws" + args.url.removeprefix("http")
    # --8<-- [start:reconnect]
    while True:
        try:
            await session(url, args.token, args.channels, state)
            break
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006  # no close frame: a dropped network
            # resume, reauth (this example has one fixed token: it stops) or stop
            # (docs/reference/close-codes.md)
            if close_policy(code) is not Policy.RESUME:
                print("closed", code, exc.rcvd.reason if exc.rcvd else "")
                return 1
            print("reconnecting after", code)
        except OSError as exc:
            print("connection failed:", exc)
        await asyncio.sleep(1)
    # --8<-- [end:reconnect]
    print("cursor", state["cursor"])
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
