"""The pushsvc Python client (asyncio): WebSocket, then SSE, then long-polling, resuming
with one cursor on every reconnect, with an outbox for what the application publishes.

    async with Client("http://localhost:8000", token, ["chat"]) as client:
        await client.publish("chat", {"text": "hi"})
        async for item in client:
            print(item)
"""

from pushsvc.client._client import Client
from pushsvc.client._errors import (
    ClientClosed,
    OutboxFull,
    PublishRejected,
    PushClientError,
    ServerRejected,
)
from pushsvc.client._models import STATES, TRANSPORTS, Event, Gap, Member, PresenceChange

__all__ = [
    "STATES",
    "TRANSPORTS",
    "Client",
    "ClientClosed",
    "Event",
    "Gap",
    "Member",
    "OutboxFull",
    "PresenceChange",
    "PublishRejected",
    "PushClientError",
    "ServerRejected",
]
