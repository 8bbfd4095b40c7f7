"""The outbox: what the application publishes, until the server acks it.

Each message has a client message id (a uuid) that the server uses as its idempotency key
on every transport (the WS publish frame's ``id``, the HTTP publish's
``idempotency_key``). A message whose send failed mid-flight, or whose ack was lost with
the connection, goes back to the head of the queue and is sent again with the same id:
the server stores it once and acks it with the original event ID.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pushsvc.client._errors import OutboxFull


@dataclass(slots=True)
class Outgoing:
    channel: str
    event: str
    data_json: str | None  # compact JSON text of the payload, or
    raw: bytes | None  # the binary payload
    future: asyncio.Future[str]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def ws_frame(self) -> str | bytes:
        head = {"type": "publish", "id": self.id, "channel": self.channel, "event": self.event}
        if self.raw is not None:
            return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.raw
        return json.dumps(head, separators=(",", ":"))[:-1] + ',"data":' + f"{self.data_json}}}"

    def http_body(self) -> bytes:
        head: dict[str, Any] = {
            "channel": self.channel,
            "event": self.event,
            "idempotency_key": self.id,
        }
        if self.raw is not None:
            head["data_b64"] = base64.b64encode(self.raw).decode()
            return json.dumps(head, separators=(",", ":")).encode()
        text = json.dumps(head, separators=(",", ":"))[:-1] + ',"data":' + f"{self.data_json}}}"
        return text.encode()


class Outbox:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: deque[Outgoing] = deque()
        self._inflight: dict[str, Outgoing] = {}  # sent on the current connection
        self._all: dict[str, Outgoing] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._all)

    def add(self, msg: Outgoing) -> None:
        if len(self._all) >= self.limit:
            raise OutboxFull(self.limit)
        self._all[msg.id] = msg
        self._pending.append(msg)
        msg.future.add_done_callback(lambda _: self._all.pop(msg.id, None))
        self._wake.set()

    async def next(self) -> Outgoing:
        """The oldest message not yet sent on this connection (waits for one)."""
        while True:
            while self._pending:
                msg = self._pending.popleft()
                if not msg.future.done():  # not cancelled by the application
                    self._inflight[msg.id] = msg
                    return msg
            self._wake.clear()
            await self._wake.wait()

    def acked(self, msg_id: str, event_id: str) -> None:
        self._inflight.pop(msg_id, None)
        msg = self._all.get(msg_id)
        if msg is not None and not msg.future.done():
            msg.future.set_result(event_id)

    def failed(self, msg_id: str, exc: BaseException) -> None:
        self._inflight.pop(msg_id, None)
        msg = self._all.get(msg_id)
        if msg is not None and not msg.future.done():
            msg.future.set_exception(exc)

    def retry_later(self, msg_id: str) -> None:
        """Put an in-flight message back at the head of the queue (e.g. rate limited)."""
        msg = self._inflight.pop(msg_id, None)
        if msg is not None and not msg.future.done():
            self._pending.appendleft(msg)
            self._wake.set()

    def requeue(self) -> int:
        """The connection is gone: unacked messages go back, in order, to the head."""
        back = [m for m in self._inflight.values() if not m.future.done()]
        self._inflight.clear()
        self._pending.extendleft(reversed(back))
        if self._pending:
            self._wake.set()
        return len(back)

    def close(self, exc: BaseException) -> None:
        for msg in list(self._all.values()):
            if not msg.future.done():
                msg.future.set_exception(exc)
        self._pending.clear()
        self._inflight.clear()
