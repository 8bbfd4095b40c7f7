"""pushsvc inside a FastAPI application: mounted at ``/push``, published to from a route
with the in-process API (``PushService``); and ``Publisher``, for another service that
publishes over HTTP. FastAPI is an optional dependency: ``pip install 'pushsvc[examples]'``.

    python examples/fastapi_app.py                  # serves, checks itself, exits
    uvicorn examples.fastapi_app:app                # just serves (PUSHSVC_* settings)

Run as a script it starts uvicorn on a free port, subscribes to ``orders`` with the
Python client through ``/push``, creates an order (``POST /orders``), publishes a
shipment with ``Publisher`` as another service would, prints both events, and stops.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

import pushsvc.server
from pushsvc import Publisher, PushService, Settings
from pushsvc.client import Client, Event

# --8<-- [start:app]
# Settings from PUSHSVC_* variables (or Settings(...) in code); with no secret and no
# API key configured, ephemeral ones are generated.
push = PushService(Settings.from_env())

# FastAPI does not run a mounted app's lifespan: pushsvc's runs as the app's lifespan.
# With a lifespan of your own, enter pushsvc's inside it: `async with push: yield`.
app = FastAPI(lifespan=push.lifespan)
app.mount("/push", push.app)  # /push/v1/ws, /push/v1/sse, /push/v1/publish, ...

order_numbers = itertools.count(1)


class Order(BaseModel):
    item: str
    quantity: int = 1


@app.post("/orders")
async def create_order(order: Order) -> dict[str, Any]:
    number = next(order_numbers)
    # No HTTP hop and no credential: the application is trusted. The same validation,
    # limits and errors as POST /v1/publish (pushsvc.BadRequest, PayloadTooLarge, ...).
    event_id = await push.publish(
        "orders",
        {"order": number, "item": order.item, "quantity": order.quantity},
        event="order.created",
        idempotency_key=f"order-{number}-created",  # a retried request is stored once
    )
    return {"order": number, "event_id": event_id}


# --8<-- [end:app]


# --8<-- [start:publisher]
async def ship(url: str, api_key: str, order: int) -> str:
    """What another service does: publish over HTTP with an API key. Keep one Publisher
    for the life of the service (a keep-alive connection pool); it retries connection
    failures, 429 and 502-504 with the same idempotency key, so each event is stored once.
    For code without an event loop: pushsvc.SyncPublisher, the same API."""
    async with Publisher(url, api_key) as publisher:
        return await publisher.publish(
            "orders", {"order": order}, event="order.shipped", idempotency_key=f"ship-{order}"
        )


# --8<-- [end:publisher]


async def self_check(base: str) -> None:
    api_key = push.settings.api_keys[0]
    # an API key may subscribe to any channel; a browser would use a user token
    async with (
        Client(base + "/push", api_key, ["orders"]) as client,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        # pinned: every event stored on the channels from here on arrives, exactly once
        print("ready", await client.ready(timeout=10))
        created = (await http.post("/orders", json={"item": "book", "quantity": 2})).json()
        print("created", created["order"], created["event_id"])
        shipped = await ship(base + "/push", api_key, created["order"])
        print("shipped", shipped)
        seen = 0
        async for item in client:
            if isinstance(item, Event):
                print("event", item.channel, item.event, item.id, item.data)
                seen += 1
                if seen == 2:
                    break


async def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = pushsvc.server.config(
        app, push.settings, host="127.0.0.1", port=port, log_level="warning"
    )
    server = pushsvc.server.GracefulServer(config, push.hub)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn.Server has no "started" event to wait on
        if serving.done():
            return 1
        await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(self_check(f"http://127.0.0.1:{port}"), 30)
    finally:
        server.should_exit = True
        await serving
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
