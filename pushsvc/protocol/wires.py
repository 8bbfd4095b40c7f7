"""How a session's frames look on each transport (thin wrappers over protocol.frames)."""

from __future__ import annotations

from typing import ClassVar

from pushsvc.protocol import cursor as cursor_codec
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


# SSE types a published event never takes on the named wire: the control frames' own
# (a page's ``gap`` or ``close`` listener must see only pushsvc's), and ``open`` and
# ``error``, which ``EventSource`` fires itself (an ``event: error`` frame would reach
# ``onerror``). Such an event goes as ``message``; its name is still in the data.
SSE_RESERVED_TYPES = frozenset(
    {
        "subscribed",
        "gap",
        "heartbeat",
        "presence",
        "join",
        "leave",
        "token-expired",
        "close",
        "open",
        "error",
    }
)


def sse_event_type(name: str) -> str:
    """The SSE ``event:`` type of an event named ``name`` on the named wire. Publish
    allows no line break in a name; a name with one (in a log another program wrote)
    would end the field early, so it goes as ``message`` too."""
    if name in SSE_RESERVED_TYPES or "\n" in name or "\r" in name:
        return "message"
    return name


class SSENamedWire(SSEWire):
    """SSE with the event's name as its ``event:`` type (``?named_events=1``), so a page
    can ``addEventListener("order.created", ...)``; an unnamed event is ``message``.
    Everything else is as on ``SSEWire``: the same ``data:``, ``id:`` and control frames.
    A wire format of its own (the hub memoizes frames by wire class), so its frames are
    encoded once per event for all the sessions that chose it, and only when one did."""

    name = "sse"

    def event(self, event: Event, cursor: str | None) -> Frame:
        cache = event.cache
        if cursor is None:
            frame: bytes | None = cache.get("ssen1")
            if frame is None:
                frame = cache["ssen1"] = (
                    self._prefix(event)
                    + cursor_codec.VERSION.encode()
                    + event.segment.encode()
                    + b"\n\n"
                )
            return frame
        return self._prefix(event) + cursor.encode() + b"\n\n"

    @staticmethod
    def _prefix(event: Event) -> bytes:
        prefix: bytes | None = event.cache.get("ssenp")
        if prefix is None:
            prefix = event.cache["ssenp"] = (
                b"event: "
                + sse_event_type(event.name).encode()
                + b"\ndata: "
                + frames.envelope(event)
                + b"\nid: "
            )
        return prefix


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
