"""Binary payloads: publish bytes over HTTP (base64) and as a WebSocket binary frame, then
receive them as binary frames on the WebSocket and as base64 on long-poll (and SSE).

    PUSHSVC_TOKEN=... PUSHSVC_API_KEY=... python examples/binary.py chat:files
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys

import httpx
import websockets


async def run(url: str, token: str, api_key: str, channel: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        user = {"Authorization": f"Bearer {token}"}
        start = await http.get("/v1/poll", params={"channel": channel, "timeout": 0}, headers=user)
        cursor = start.json()["cursor"]

        # --8<-- [start:http]
        payload = bytes(range(8)) + b"\xff\xfe"
        r = await http.post(
            "/v1/publish",
            json={
                "channel": channel,
                "event": "blob",
                "data_b64": base64.b64encode(payload).decode(),
            },
            headers={"Authorization": f"Bearer {api_key}"},
        )
        print("http published", r.json()["id"], len(payload), "bytes")
        # --8<-- [end:http]

        async with websockets.connect(
            url.replace("http", "ws", 1) + "/v1/ws", additional_headers=user
        ) as ws:
            await ws.send(
                json.dumps({"type": "subscribe", "channels": [channel], "cursor": cursor})
            )
            # --8<-- [start:ws-send]
            header = {"type": "publish", "id": "upload-1", "channel": channel, "event": "blob"}
            await ws.send(json.dumps(header).encode() + b"\n" + b"\x00raw bytes\x01")
            # --8<-- [end:ws-send]
            received = 0
            while received < 2:
                frame = await ws.recv()
                # --8<-- [start:ws-receive]
                if isinstance(frame, bytes):  # binary event: JSON header line, then payload
                    head, _, data = frame.partition(b"\n")
                    event = json.loads(head)  # ..."encoding": "binary", "cursor": ...
                    print("ws binary", event["id"], event["event"], data.hex())
                    received += 1
                # --8<-- [end:ws-receive]

        # --8<-- [start:poll]
        r = await http.get("/v1/poll", params={"channel": channel, "cursor": cursor}, headers=user)
        for event in r.json()["events"]:
            data = event["data"]
            if event.get("encoding") == "base64":  # binary payloads on SSE and long-poll
                data = base64.b64decode(data)
            print("poll", event["id"], event["event"], data.hex())
        # --8<-- [end:poll]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel", nargs="?", default="chat:files")
    parser.add_argument("--url", default=os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("PUSHSVC_TOKEN"))
    parser.add_argument("--api-key", default=os.environ.get("PUSHSVC_API_KEY"))
    args = parser.parse_args(argv)
    if not args.token or not args.api_key:
        parser.error("give --token and --api-key (or PUSHSVC_TOKEN, PUSHSVC_API_KEY)")
    return asyncio.run(run(args.url, args.token, args.api_key, args.channel))


if __name__ == "__main__":
    sys.exit(main())
