"""Small, dependency-free readers for the three wires, used by end-to-end tests.

These deliberately do not use ``pushsvc.client``: they check the wire itself.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets


@dataclass
class SSEFrame:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEReader:
    """Reads an SSE response frame by frame (comments are kept in ``comments``)."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    last_id: str | None = None
    retry: int | None = None

    async def frames(self) -> Any:
        frame = SSEFrame()
        has_fields = False
        async for line in self.response.aiter_lines():
            if line == "":
                if has_fields:
                    if frame.id is not None:
                        self.last_id = frame.id
                    if frame.data:  # as EventSource: no data, no dispatch
                        yield frame
                frame, has_fields = SSEFrame(), False
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                has_fields = True
                if name == "event":
                    frame.event = value
                elif name == "data":
                    frame.data = value if not frame.data else frame.data + "\n" + value
                elif name == "id":
                    frame.id = value
                elif name == "retry":
                    self.retry = int(value)


async def sse_collect(
    base_url: str,
    channels: list[str],
    token: str,
    n_events: int,
    last_event_id: str | None = None,
    timeout: float = 10.0,
) -> tuple[list[dict[str, Any]], str | None]:
    """Read until ``n_events`` items of type message/gap; answer them and the last id."""
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    items: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream(
            "GET", base_url + "/v1/sse", params={"channel": channels}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        reader = SSEReader(response)
        async with asyncio.timeout(timeout):
            async for frame in reader.frames():
                if frame.event in ("message", "gap"):
                    item = frame.json()
                    item["type"] = "event" if frame.event == "message" else "gap"
                    items.append(item)
                    if len(items) >= n_events:
                        break
    return items, reader.last_id


async def poll_once(
    base_url: str,
    channels: list[str],
    token: str,
    cursor: str | None = None,
    timeout: float = 1.0,
) -> dict[str, Any]:
    params: dict[str, Any] = {"channel": channels, "timeout": timeout}
    if cursor:
        params["cursor"] = cursor
    async with httpx.AsyncClient(timeout=timeout + 10) as client:
        r = await client.get(
            base_url + "/v1/poll", params=params, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def poll_collect(
    base_url: str, channels: list[str], token: str, n_events: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    items: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while len(items) < n_events:
            body = await poll_once(base_url, channels, token, cursor)
            items += body["events"]
            cursor = body["cursor"]
    assert cursor is not None
    return items, cursor


async def ws_collect(
    ws_url: str,
    channels: list[str],
    token: str,
    n_events: int,
    cursor: str | None = None,
    timeout: float = 10.0,
) -> tuple[list[dict[str, Any]], str | None]:
    items: list[dict[str, Any]] = []
    last_cursor = cursor
    async with websockets.connect(f"{ws_url}/v1/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": channels, "cursor": cursor}))
        async with asyncio.timeout(timeout):
            while len(items) < n_events:
                frame = json.loads(await ws.recv())
                if "cursor" in frame:
                    last_cursor = frame["cursor"]
                if frame["type"] in ("event", "gap"):
                    items.append(frame)
    return items, last_cursor


def by_channel(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        if item["type"] == "event":
            out.setdefault(item["channel"], []).append(item["id"])
    return out
