"""How a session's frames look on each transport (thin wrappers over protocol.frames)."""

from __future__ import annotations

from typing import ClassVar

from pushsvc.protocol import frames
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.presence import PresenceDiff, PresenceSnapshot

Frame = str | bytes


class Wire:
    name: ClassVar[str]
    needs_cursor: ClassVar[bool] = True
    idle_closes: ClassVar[bool] = False  # close when subscribed to nothing for idle_timeout
    heartbeat: ClassVar[Frame]

    def event(self, event: Event, cursor: str | None) -> Frame:
        raise NotImplementedError

    def gap(self, gap: Gap, cursor: str) -> Frame:
        raise NotImplementedError

    def subscribed(self, channels: list[str], cursor: str) -> Frame:
        raise NotImplementedError

    def control(self, kind: str, cursor: str | None = None, **fields: object) -> Frame:
        raise NotImplementedError

    def presence(self, channel: str, snapshot: PresenceSnapshot) -> Frame:
        return self.control("presence", **frames.presence_fields(channel, snapshot))

    def presence_diff(self, diff: PresenceDiff) -> Frame:
        return self.control(diff.kind, **frames.presence_diff_fields(diff))


class WebSocketWire(Wire):
    name = "websocket"
    idle_closes = True
    heartbeat = frames.ws_control("heartbeat")

    def event(self, event: Event, cursor: str | None) -> Frame:
        return frames.ws_event(event, cursor)

    def gap(self, gap: Gap, cursor: str) -> Frame:
        return frames.ws_gap(gap, cursor)

    def subscribed(self, channels: list[str], cursor: str) -> Frame:
        return frames.ws_control("subscribed", channels=channels, cursor=cursor)

    def control(self, kind: str, cursor: str | None = None, **fields: object) -> Frame:
        if cursor is not None:
            fields["cursor"] = cursor
        return frames.ws_control(kind, **fields)


class SSEWire(Wire):
    name = "sse"
    heartbeat = frames.SSE_HEARTBEAT

    def event(self, event: Event, cursor: str | None) -> Frame:
        return frames.sse_event(event, cursor)

    def gap(self, gap: Gap, cursor: str) -> Frame:
        return frames.sse_gap(gap, cursor)

    def subscribed(self, channels: list[str], cursor: str) -> Frame:
        return frames.sse_control("subscribed", cursor, channels=channels)

    def control(self, kind: str, cursor: str | None = None, **fields: object) -> Frame:
        return frames.sse_control(kind, cursor, **fields)


class PollWire(Wire):
    """Long-poll items carry no cursor: the response has one for the whole batch."""

    name = "long-polling"
    needs_cursor = False
    heartbeat = b""

    def event(self, event: Event, cursor: str | None) -> Frame:
        return frames.poll_event(event)

    def gap(self, gap: Gap, cursor: str) -> Frame:
        return frames.poll_gap(gap)

    def subscribed(self, channels: list[str], cursor: str) -> Frame:
        return b""

    def control(self, kind: str, cursor: str | None = None, **fields: object) -> Frame:
        return b""

    def presence(self, channel: str, snapshot: PresenceSnapshot) -> Frame:
        return frames.poll_item("presence", frames.presence_fields(channel, snapshot))

    def presence_diff(self, diff: PresenceDiff) -> Frame:
        return frames.poll_item(diff.kind, frames.presence_diff_fields(diff))
