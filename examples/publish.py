"""Publish from a backend service: one message, a batch, and a retried publish that is
stored once thanks to its idempotency key.

    PUSHSVC_URL=http://127.0.0.1:8000 PUSHSVC_API_KEY=dev-key python examples/publish.py chat:lobby
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any

import httpx


# --8<-- [start:retry]
def publish(client: httpx.Client, body: dict[str, Any], attempts: int = 5) -> Any:
    """POST one message or batch. Retrying is safe when every message carries an
    idempotency key: a retry of a publish that was stored answers the original ID."""
    for attempt in range(attempts):
        try:
            r = client.post("/v1/publish", json=body)
        except httpx.TransportError:
            time.sleep(0.2 * 2**attempt)  # the request may or may not have been stored
            continue
        if r.status_code in (429, 503):  # rate limit, backend down: the server says when
            time.sleep(float(r.headers.get("Retry-After", "1")))
            continue
        if r.status_code != 200:  # 400/401/403/413: retrying would not help
            problem = r.json()
            raise RuntimeError(f"HTTP {r.status_code}: {problem['detail']}")
        return r.json()
    raise RuntimeError(f"gave up after {attempts} attempts")


# --8<-- [end:retry]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel", nargs="?", default="chat:lobby")
    parser.add_argument("--url", default=os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("PUSHSVC_API_KEY"))
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("give --api-key or set PUSHSVC_API_KEY")
    channel = args.channel

    # --8<-- [start:client]
    client = httpx.Client(
        base_url=args.url,
        headers={"Authorization": f"Bearer {args.api_key}"},
        timeout=10,
    )
    # --8<-- [end:client]
    with client:
        # --8<-- [start:single]
        answer = publish(client, {"channel": channel, "event": "greeting", "data": {"text": "hi"}})
        print("published", answer["channel"], answer["id"])
        # --8<-- [end:single]

        # --8<-- [start:batch]
        answer = publish(
            client,
            {
                "messages": [
                    {"channel": channel, "data": {"text": "first"}},
                    {"channel": channel, "data": {"text": "second"}},
                    {"channel": channel + ".audit", "event": "audit", "data": [1, 2, 3]},
                ]
            },
        )
        for result in answer["results"]:  # one result per message, in order
            print("batch", result["channel"], result["id"])
        # --8<-- [end:batch]

        # --8<-- [start:idempotent]
        key = f"order-42-paid-{uuid.uuid4()}"  # derived from what the message is about
        body = {"channel": channel, "data": {"order": 42, "paid": True}, "idempotency_key": key}
        first = publish(client, body)["id"]
        again = publish(client, body)["id"]  # e.g. resent after a timeout: stored once
        print("idempotent", first, again, "same" if first == again else "DIFFERENT")
        # --8<-- [end:idempotent]
    return 0


if __name__ == "__main__":
    sys.exit(main())
